"""The chaos suite, short (``make chaos`` is the long one): under a steady stream of
readings, inference, audit and the hub are each SIGKILLed by PID, kept down 2 s and
restarted by the harness (``bench.chaos``). Only the hard invariants are asserted, never
timings: no decision is published without its audit entry, no acknowledged entry is lost,
and the hub decides again after every restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos import Plan, run_chaos
from bench.e2e import sample_readings
from tests.support.stacks import start_stack

pytestmark = pytest.mark.integration

PLAN = Plan(
    rate=100.0,
    outages=(("inference", "short", 2.0), ("audit", "short", 2.0), ("hub", "short", 2.0)),
    pre_seconds=1.5,
    tail_seconds=0.5,
    resume_timeout=30.0,
    settle_timeout=30.0,
)


async def test_kill_inference_audit_and_hub_under_load(tmp_path: Path) -> None:
    stack = start_stack(tmp_path)
    try:
        res = await run_chaos(stack, PLAN, sample_readings(400))
        hub_alive = stack.procs["hub"].alive()
    finally:
        stack.stop()
    totals, rows = res["totals"], res["outages"]
    assert [r["process"] for r in rows] == ["inference", "audit", "hub"]
    # Something was at stake each time: decisions flowed and the log held entries.
    assert totals["decisions_received"] > 500
    assert all(r["acked_before"] > 0 for r in rows)
    assert totals["malformed"] == 0
    # Every decision received on MQTT is in the audit log, at its published index.
    assert totals["unaudited"] == 0, rows
    # No entry read from the log before a kill is missing after the restart.
    assert totals["acked_lost"] == 0, rows
    assert all(r["acked_lost"] == 0 for r in rows)
    # The hub decided again after each process came back (no wall-clock bound here).
    never = [r["process"] for r in rows if r["resume_s"] is None]
    assert never == [], f"no decision after {never} came back"
    assert hub_alive
