"""A hub restarted with a queued backlog at the broker decides fresh readings within 2 s
of being ready (issue 13), and still decides the backlog, losing nothing.

Real mosquitto, audit, inference and hub; the hub is SIGKILLed under 300 readings/s and
kept down 20 s, so about 6,000 readings wait for its persistent session.

Known to fail (docs/reliability.md, "Hub restart"): the broker delivers a session's queue
in order, and each reading must pass through the feature windows in order before the
fresh one can be decided. Measured after a 20 s outage: 50 s to decide again on a loaded
machine (load average 5); after a 10 s outage, 2.1-3.7 s on an idle one. The
timing is marked expected-to-fail, strictly (the mark must go once it holds); the
invariants are asserted as usual and fail the test if broken.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos import Plan, run_chaos
from bench.e2e import sample_readings
from tests.support.stacks import start_stack

pytestmark = pytest.mark.integration

FLOOR_SECONDS = 2.0
PLAN = Plan(
    rate=300.0,
    outages=(("hub", "long", 20.0),),
    pre_seconds=2.0,
    tail_seconds=0.5,
    resume_timeout=120.0,
    settle_timeout=120.0,
)


class TooSlow(AssertionError):
    """The hub decided again, but later than the floor."""


@pytest.mark.xfail(
    raises=TooSlow,
    strict=True,
    reason="a restarted hub reads the broker's queue in order before fresh readings",
)
async def test_fresh_readings_are_decided_soon_after_a_restart_with_a_backlog(
    tmp_path: Path,
) -> None:
    stack = start_stack(tmp_path)
    try:
        res = await run_chaos(stack, PLAN, sample_readings(800))
    finally:
        stack.stop()
    (row,) = res["outages"]
    totals = res["totals"]
    # The backlog was real: thousands of readings published while the hub was down.
    assert row["published"] > 4_000, row
    assert row["resume_s"] is not None, "the hub never decided again"
    assert row["lost"] == 0, row
    assert row["duplicates"] == 0, row
    assert totals["unaudited"] == 0
    if row["resume_s"] > FLOOR_SECONDS:
        raise TooSlow(f"decided again {row['resume_s']:.2f} s after ready (> {FLOOR_SECONDS} s)")
