"""A hub restarted with a queued backlog at the broker decides fresh readings at once,
while it reads the backlog, and is killed again while catching up: nothing lost,
nothing decided twice, nothing published unaudited (issue 13, ``hub.catchup``).

Real mosquitto, audit, inference and hub; the hub is SIGKILLed under 300 readings/s and
kept down 20 s (about 6,000 readings wait for its persistent session), restarted, and
SIGKILLed again as soon as it decided a fresh reading (the backlog still undecided:
asserted), then restarted once more. Whether that second kill falls while the live
session is open depends on the machine: when the persistent session reads its queue
before the live session's marker came back, the catch-up is over at once (the hub's log
says after how many live readings); the kill during a catch-up is covered by
``tests/unit/hub/test_intake_catchup.py``. No wall-clock assert: the order is asserted (a
reading published after the restart was decided before the backlog was), and the time
to decide again is printed (docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from bench.chaos_audit import AuditView
from bench.chaos_ledger import Ledger, Outage, summarize, unaudited
from bench.chaos_load import Load
from bench.e2e import sample_readings
from cli.stack import Stack
from tests.support.stacks import start_stack

pytestmark = pytest.mark.integration

RATE = 300.0
DOWN = 20.0
WAIT = 180.0


def arrivals(ledger: Ledger, lo: int, hi: int) -> list[float]:
    return sorted(d.arrived_at for s in range(lo, hi) for d in ledger.decisions.get(s, ()))


async def restart(stack: Stack) -> float:
    await asyncio.to_thread(stack.start_hub)
    return time.monotonic()


@pytest.mark.timeout(900)
async def test_a_restarted_hub_decides_fresh_readings_while_reading_its_backlog(
    tmp_path: Path,
) -> None:
    stack = start_stack(tmp_path)
    try:
        audit = AuditView(stack)
        async with Load(
            port=stack.broker_port,
            hub_id=stack.hub_id,
            rate=RATE,
            values=sample_readings(800),
            max_readings=int(RATE * 900),
            max_seconds=900.0,
        ) as load:
            ledger = load.ledger
            assert await load.decided_after(time.monotonic(), WAIT), "no decision at all"
            o = Outage("hub", "long", DOWN, first_seq=ledger.next_seq, wall_start=time.time())
            await asyncio.sleep(2.0)
            o.killed_at = time.monotonic()
            kill_seq = ledger.next_seq
            stack.kill("hub")
            await asyncio.sleep(DOWN)
            o.ready_at = ready = await restart(stack)
            ready_seq = ledger.first_sent_at_or_after(ready)
            assert await load.decided_after(ready, WAIT), "the hub never decided again"
            fresh_at = arrivals(ledger, ready_seq, ledger.next_seq)[0]
            # Decided while the backlog is still being read: readings published while
            # the hub was down are still undecided.
            backlog_left = ledger.undecided(kill_seq, ready_seq - 1)
            assert backlog_left > 0, "the backlog was read before the fresh reading"
            stack.kill("hub")  # kill -9 while the backlog is decided (and read, if it still is)
            await asyncio.sleep(2.0)
            second = await restart(stack)
            assert await load.decided_after(second, WAIT)
            assert await load.caught_up(WAIT, since=o.first_seq)
            await asyncio.sleep(1.0)
            load.stop()
            await load.quiet(2.0, WAIT)
            o.end_seq, o.wall_end = ledger.next_seq, time.time()
        log = await audit.everything()
    finally:
        stack.stop()
    received = {d.decision_id for d in ledger.all_seen()}
    row = summarize(o, ledger, log, received)
    backlog_last = arrivals(ledger, kill_seq, ready_seq)[-1]
    print(
        f"hub restart: a fresh reading decided {fresh_at - ready:.2f} s after ready, "
        f"{backlog_left} backlog readings still undecided then; the backlog's last "
        f"decision {backlog_last - ready:.2f} s after ready (killed again meanwhile)"
    )
    assert row["published"] > 4_000, row  # the backlog was real
    assert row["lost"] == 0, row
    assert row["duplicates"] == 0, row
    assert row["unaudited"] == 0, row
    assert not unaudited(ledger.all_seen(), log)
    assert fresh_at < backlog_last  # the fresh reading before the backlog's last
