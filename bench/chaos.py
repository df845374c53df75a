"""Chaos suite (issue 13): kill each process of a real stack under load; check and measure.

``make chaos`` (``python -m bench.chaos``) starts a real stack the way ``roost run`` does
(mosquitto, audit, inference, update, personalization, hub: ``cli.stack.Stack``),
publishes household readings (``cli.household_stream``: the UCI replay, or the
synthetic source) at 300 readings/s over loopback, and for each process in turn: kills
it by PID with SIGKILL, keeps it down (2 s, three times; then 60 s once), restarts it
through the Stack API on the same port (the harness itself, no supervisor), and waits
until decisions caught up. Then it checks and measures (definitions in
:mod:`bench.chaos_ledger`):

* every decision received on MQTT is in the audit log, at its published index;
* no audit entry read before a kill is missing after the restart;
* readings lost per outage (published, never decided);
* time to decide again once the restarted process is ready.

``--quick``: one 2 s and one 8 s outage per process. ``--only hub,audit``: just those
(printed, not written). Results: a table, ``bench/results/chaos.{json,md,png}``.
The short version runs in ``make test`` (``tests/integration/test_chaos.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bench.chaos_audit import AuditView
from bench.chaos_ledger import (
    Outage,
    aggregate,
    lost_entries,
    owed_decisions,
    summarize,
    unaudited,
)
from bench.chaos_load import Load
from bench.chaos_report import plot, render
from bench.e2e import sample_readings
from bench.machine import machine_info
from bench.report import write
from cli.stack import Stack
from models.features import OCCUPANCY_V1
from services.kit.auth import Role

# The table has a dozen columns: wider than a terminal's default 80 when output is a file.
console = Console(width=None if sys.stdout.isatty() else 160)
BROKER = "mosquitto"
# In the order they are killed; labels as the issue names them.
PROCESSES = (BROKER, "hub", "inference", "audit", "update", "personalization")
LABELS = {BROKER: "broker"}
RATE = 300.0
# Audit entries re-read after each restart: the newest this many before the kill.
RECHECK_ENTRIES = 20_000
VALUES = 8_000  # household readings, cycled (whole rows)

Say = Callable[[str], None]


@dataclass(frozen=True)
class Plan:
    rate: float
    # (process, "short" | "long", seconds down), in order.
    outages: tuple[tuple[str, str, float], ...]
    pre_seconds: float = 3.0  # steady load before each kill
    tail_seconds: float = 2.0  # steady load after decisions caught up
    resume_timeout: float = 120.0  # for the first decision after a restart
    settle_timeout: float = 120.0  # for a backlog to drain

    def bounds(self) -> tuple[int, float]:
        """The load's bounds: at most this many readings, for at most this long."""
        per = self.pre_seconds + self.tail_seconds + self.resume_timeout + 2 * self.settle_timeout
        seconds = sum(per + down + 30.0 for _, _, down in self.outages) + 60.0
        return int(self.rate * seconds), seconds


def plan(
    processes: Sequence[str], *, short: float, long: float, repeats: int, rate: float = RATE
) -> Plan:
    outages: list[tuple[str, str, float]] = []
    for p in processes:
        outages += [(p, "short", short)] * repeats + [(p, "long", long)]
    return Plan(rate, tuple(outages))


def label(process: str) -> str:
    return LABELS.get(process, process)


def _port(stack: Stack, process: str) -> int:
    """Where the others reach ``process`` (the hub serves nothing they call: 0)."""
    if process == BROKER:
        return stack.broker_port
    return 0 if process == "hub" else stack.port_of(Role(process))


def _restart(stack: Stack, process: str, port: int) -> float:
    """Start ``process`` again on its port (the others name it there); when it was ready."""
    if process == BROKER:
        stack.start_broker(port)
    elif process == "hub":
        stack.start_hub()
    else:
        stack.start_service(Role(process), {f"ROOST_{process.upper()}_PORT": str(port)})
    return time.monotonic()


async def _outage(stack: Stack, load: Load, audit: AuditView, o: Outage, p: Plan, say: Say) -> bool:
    """One kill and restart; whether the hub decided again afterwards."""
    name = label(o.process)
    say(f"{name}: steady load")
    await asyncio.sleep(p.pre_seconds)  # the scenario: steady load, then the kill
    o.acked_before = await audit.refresh()
    top = audit.top
    port = _port(stack, o.process)
    o.pid_killed = stack.procs[o.process].popen.pid
    o.killed_at = time.monotonic()
    stack.kill(o.process)  # SIGKILL to that PID, reaped
    say(f"{name}: pid {o.pid_killed} SIGKILLed, down for {o.down_seconds:g}s")
    await asyncio.sleep(o.down_seconds)  # the outage itself
    say(f"{name}: restarting")
    o.ready_at = await asyncio.to_thread(_restart, stack, o.process, port)
    o.pid_restarted = stack.procs[o.process].popen.pid
    say(f"{name}: back (pid {o.pid_restarted}); waiting for decisions")
    resumed = await load.decided_after(o.ready_at, p.resume_timeout)
    if resumed:
        say(f"{name}: deciding; draining the backlog")
        await load.caught_up(p.settle_timeout, since=o.first_seq)
    await asyncio.sleep(p.tail_seconds)
    o.acked_lost = await audit.missing_since(max(0, top - RECHECK_ENTRIES))
    o.end_seq, o.wall_end = load.ledger.next_seq, time.time()
    return resumed


def _progress_line(o: Outage, load: Load) -> str:
    ledger = load.ledger
    first = ledger.first_sent_at_or_after(o.ready_at)
    arrivals = [d.arrived_at for s in range(first, o.end_seq) for d in ledger.decisions.get(s, ())]
    again = f"{min(arrivals) - o.ready_at:.2f}s" if arrivals else "NEVER"
    undecided = sum(
        1 for s in range(o.first_seq, o.end_seq) if s in ledger.acked and s not in ledger.decisions
    )
    return (
        f"{label(o.process)} {o.kind} ({o.down_seconds:g}s): back after "
        f"{o.ready_at - o.killed_at:.1f}s, deciding again {again} later, "
        f"{undecided} published readings undecided so far, "
        f"{len(o.acked_lost)} acknowledged entries lost"
    )


async def run_chaos(
    stack: Stack,
    p: Plan,
    values: Sequence[tuple[str, float]],
    *,
    say: Say = lambda _t: None,
    done: Say = lambda _t: None,
) -> dict[str, Any]:
    """Run the plan's outages on a started stack (broker, audit, inference, hub, and
    whichever others the plan kills); the raw results."""
    started = time.monotonic()
    audit = AuditView(stack)
    outages = [Outage(process, kind, down) for process, kind, down in p.outages]
    max_readings, max_seconds = p.bounds()
    async with Load(
        port=stack.broker_port,
        hub_id=stack.hub_id,
        rate=p.rate,
        values=values,
        max_readings=max_readings,
        max_seconds=max_seconds,
    ) as load:
        say("warming up")
        deciding = await load.decided_after(time.monotonic(), p.settle_timeout)
        if not deciding:
            raise RuntimeError("the stack made no decision under load before any kill")
        previous = 0  # the first reading of the last outage's window
        for o in outages:
            # Windows are contiguous: this one starts where the last one ended, and a
            # backlog the last outage left drains first (if the hub decides at all).
            o.first_seq, o.wall_start = load.ledger.next_seq, time.time()
            if deciding:
                await load.caught_up(p.settle_timeout, since=previous)
            previous = o.first_seq
            deciding = await _outage(stack, load, audit, o, p, say)
            done(_progress_line(o, load))
        load.stop()
        say("draining the last decisions")
        await load.quiet(2.0, p.settle_timeout)
    say("reading the whole audit log")
    log = await audit.everything()
    ledger = load.ledger
    received = {d.decision_id for d in ledger.all_seen()}
    # Only occupancy decides on the stream's kinds (comfort and anomaly need kinds it
    # does not carry); its spec says when a reading completes a window.
    owed = owed_decisions(
        ledger, load.reading, OCCUPANCY_V1.sensor_kinds, OCCUPANCY_V1.max_staleness_seconds
    )
    rows = [summarize(o, ledger, log, received, owed) for o in outages]
    return {
        "rate": p.rate,
        "duration_s": time.monotonic() - started,
        "plan": {
            "outages": [list(x) for x in p.outages],
            "pre_seconds": p.pre_seconds,
            "tail_seconds": p.tail_seconds,
            "resume_timeout": p.resume_timeout,
        },
        "outages": rows,
        "summary": aggregate(rows),
        "totals": {
            "offered": ledger.next_seq,
            "published": len(ledger.acked),
            "decided_readings": len(ledger.decisions),
            "decisions_received": ledger.received,
            "log_entries": len(log),
            "unaudited": len(unaudited(ledger.all_seen(), log)),
            "acked_checked": len(audit.acknowledged),
            "acked_lost": len(lost_entries(audit.acknowledged, log)),
            "recorded_not_received": sum(1 for i in log if i not in received),
            "malformed": ledger.malformed,
        },
    }


def start_full_stack(home: Path) -> Stack:
    """Every process, started as ``roost run`` starts them."""
    stack = Stack(home, hub_id="chaos", log_level="WARNING")
    stack.start_all()
    return stack


def _log_lines(stack: Stack) -> dict[str, int]:
    return {
        path.stem: len(path.read_text(errors="replace").splitlines())
        for path in sorted((stack.home / "log").glob("*.log"))
    }


async def bench(home: Path, p: Plan, mode: str) -> dict[str, Any]:
    values = sample_readings(VALUES)
    console.print("[bold]starting[/] mosquitto, audit, inference, update, personalization, hub ...")
    with start_full_stack(home) as stack:
        with Progress(
            TextColumn("[bold]chaos"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=console,
        ) as progress:
            task = progress.add_task("", total=len(p.outages))

            def done(line: str) -> None:
                progress.console.print(f"  {line}")
                progress.advance(task)

            res = await run_chaos(
                stack,
                p,
                values,
                say=lambda text: progress.update(task, description=text),
                done=done,
            )
        res["log_lines"] = _log_lines(stack)
    return {"mode": mode, "machine": machine_info(), **res}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one 2 s and one 8 s outage each")
    parser.add_argument("--only", default="", help="comma-separated processes (not written)")
    parser.add_argument("--rate", type=float, default=RATE, help="readings per second")
    parser.add_argument("--home", type=Path, help="keep the stack's files (logs) here")
    args = parser.parse_args(argv)
    by_label = {label(x): x for x in PROCESSES}
    unknown = [x for x in args.only.split(",") if x and x not in by_label]
    if unknown:
        parser.error(f"--only: unknown {unknown}; choose from {', '.join(by_label)}")
    chosen = [by_label[x] for x in args.only.split(",") if x] or list(PROCESSES)
    if args.quick:
        p = plan(chosen, short=2.0, long=8.0, repeats=1, rate=args.rate)
    else:
        p = plan(chosen, short=2.0, long=60.0, repeats=3, rate=args.rate)
    mode = "quick" if args.quick else "full"
    with contextlib.ExitStack() as scope:
        home = args.home or Path(scope.enter_context(tempfile.TemporaryDirectory(prefix="chaos-")))
        res = asyncio.run(bench(home, p, mode))
    table, md = render(res)
    console.print(table)
    if args.only or args.rate != RATE:
        console.print("(a partial run: results not written)")
        return 0
    write("chaos", res, "")  # the raw results first, whatever happens next
    js, mdp = write("chaos", res, md)
    png = mdp.with_suffix(".png")
    plot(res, png)
    console.print(f"written: {js}, {mdp}, {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
