"""Soak: a real stack under a steady load for minutes; memory must stay flat, logs quiet.

Issue 13 is done when "a 10-minute soak at 300 readings/s shows flat RSS and fewer
than 100 log lines". ``python -m bench.soak [--minutes 10] [--rate 300]`` (``make soak``)
starts the whole stack the way ``roost run`` does (mosquitto, audit, inference,
update, personalization, hub; logs at INFO) under ``var/soak/``, publishes the UCI
replay over a few areas at the rate for the duration (loopback only), and every 10 s
records the RSS of hub, inference and audit, the readings published and the decisions
received. The first minute is warm-up (imports, arenas, gRPC channels, SQLite caches);
the verdicts are about the rest:

* RSS is flat: per process, RSS at the end minus RSS at the end of minute 1 is below
  ``FLAT_MB`` (why an absolute bound, and why this one: see ``FLAT_MB``). The linear
  fit (MB per minute) over the same part is reported beside it.
* logs are quiet: fewer than ``LOG_LINE_LIMIT`` lines written to ``var/soak/log/*.log``
  by all processes together after minute 1.

Results: a printed table, bench/results/soak.{json,md,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np
import psutil
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from bench.e2e import paced_publish, sample_readings
from bench.machine import machine_info
from bench.report import markdown_table, write
from cli.household_stream import SENSOR_KINDS
from cli.stack import Stack, StackError
from hub import mqtt
from hub.topics import decisions_filter, reading_topic

console = Console()
HOME = Path("var/soak")
# What `roost run` runs at: the log criterion is about the production level.
LOG_LEVEL = "INFO"
WARMUP_SECONDS = 60
SAMPLE_SECONDS = 10
# A few rooms of one home; each gets whole rows of the replay (all four kinds).
AREAS = tuple(f"soak_{i}" for i in range(6))
SAMPLED = ("hub", "inference", "audit")
LOGGED = ("mosquitto", "audit", "inference", "update", "personalization", "hub")
# Flat = RSS growth after warm-up below this, per process. Absolute, not a percentage:
# a leak costs bytes per reading whatever the process's base size (audit ~65 MB,
# inference ~105 MB here, so 5 % would allow inference a leak 1.6 times the audit's).
# 10 MB over the 9 steady minutes at 300/s (162,000 readings) is 65 bytes per reading:
# less than one retained reading id (a 7-character str is 56 bytes, plus its slot in a
# set or dict), so any per-reading retention fails it, while the wobble between
# samples (up to ~2 MB in a 2-minute run: arenas, gRPC buffers, a backlog) passes.
FLAT_MB = 10.0
LOG_LINE_LIMIT = 100
REPLAY_ROWS = 1000
FIRST_TS = 1_423_058_400.0  # reading time of the first reading (the replay's week)
QUIET_SECONDS = 2.0
DRAIN_LIMIT_SECONDS = 30.0
_STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(,\d+)? ")
_DIGITS = re.compile(r"\d+")


class SoakError(RuntimeError):
    """The soak could not run to its end (a process of the stack died)."""


@dataclass(frozen=True)
class Sample:
    t: int  # seconds into the load on its schedule (0, 10, ...): ``t * rate`` readings sent
    elapsed: float  # seconds actually elapsed (above ``t`` when the publisher fell behind)
    rss_mb: dict[str, float]
    published: int
    decisions: int


@dataclass
class Counts:
    published: int = 0
    decisions: int = 0


@dataclass
class Run:
    samples: list[Sample] = field(default_factory=list)
    warm_offsets: dict[str, int] = field(default_factory=dict)
    end_offsets: dict[str, int] = field(default_factory=dict)
    elapsed: float = 0.0
    counts: Counts = field(default_factory=Counts)


# ---- the pure parts ---------------------------------------------------------------


def reading_message(
    i: int, values: Sequence[tuple[str, float]], areas: Sequence[str] = AREAS
) -> tuple[str, bytes, str]:
    """The ``i``-th reading of the soak: (topic, payload, id).

    ``values`` is the replay, whole rows of ``SENSOR_KINDS`` in order; row ``r`` goes to
    area ``r mod len(areas)``, so every area gets complete rows. Reading times rise by
    one second per reading (in order within every area) and ids are unique."""
    kind, value = values[i % len(values)]
    area = areas[(i // len(SENSOR_KINDS)) % len(areas)]
    key = f"s{i}"
    body = json.dumps({"value": value, "ts": FIRST_TS + i, "id": key}).encode()
    return reading_topic(area, kind), body, key


def rss_summary(
    samples: Sequence[Sample], proc: str, warmup: int = WARMUP_SECONDS
) -> dict[str, Any]:
    """RSS of ``proc`` at the end of the warm-up vs at the end, and the fit in between."""
    steady = [s for s in samples if s.t >= warmup]
    if len(steady) < 2:
        raise ValueError(f"need two samples from {warmup} s on, have {len(steady)}")
    warm, end = steady[0].rss_mb[proc], steady[-1].rss_mb[proc]
    minutes = np.array([s.t / 60 for s in steady])
    slope = float(np.polyfit(minutes, np.array([s.rss_mb[proc] for s in steady]), 1)[0])
    growth = end - warm
    return {
        "warm_mb": warm,
        "end_mb": end,
        "growth_mb": growth,
        "growth_pct": 100 * growth / warm,
        "slope_mb_per_min": slope,
        "flat": growth < FLAT_MB,
    }


def message_of(line: str) -> str:
    """A log line without its time stamp and with numbers as N (to group repeats)."""
    return _DIGITS.sub("N", _STAMP.sub("", line.strip()))[:160]


def log_summary(text: str, top: int = 3) -> dict[str, Any]:
    """Lines in a span of a log, and its most frequent messages."""
    lines = [line for line in text.splitlines() if line.strip()]
    common = Counter(message_of(line) for line in lines).most_common(top)
    return {"lines": len(lines), "top": [[m, n] for m, n in common]}


def read_span(path: Path, start: int, end: int) -> str:
    """Bytes ``start``..``end`` of a log (what a process wrote in between)."""
    with path.open("rb") as f:
        f.seek(start)
        return f.read(max(0, end - start)).decode(errors="replace")


def hub_counters(text: str) -> dict[str, float]:
    """The hub's ``roost_hub_*_total`` counters from its /metrics text, by label set."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("roost_hub_") and s.name.endswith("_total") and s.value:
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def summarize(
    run: Run, logs: Mapping[str, dict[str, Any]], rate: int, counters: Mapping[str, float]
) -> dict[str, Any]:
    """The result document (machine info added by the caller)."""
    rss = {p: rss_summary(run.samples, p) for p in SAMPLED}
    steady_lines = sum(v["steady"]["lines"] for v in logs.values())
    published, decisions = run.counts.published, run.counts.decisions
    return {
        "config": {
            "minutes": run.samples[-1].t / 60,
            "rate": rate,
            "areas": len(AREAS),
            "warmup_s": WARMUP_SECONDS,
            "sample_s": SAMPLE_SECONDS,
            "log_level": LOG_LEVEL,
            "flat_mb": FLAT_MB,
            "log_line_limit": LOG_LINE_LIMIT,
        },
        "published": published,
        "decisions": decisions,
        "decisions_per_reading": decisions / published if published else 0.0,
        "elapsed_s": run.elapsed,
        "achieved_rate": published / run.elapsed if run.elapsed else 0.0,
        "rss": rss,
        "logs": dict(logs),
        "log_lines_steady": steady_lines,
        "hub_counters": dict(counters),
        "samples": [asdict(s) for s in run.samples],
        "flat_rss": all(r["flat"] for r in rss.values()),
        "quiet_logs": steady_lines < LOG_LINE_LIMIT,
    }


def _yes(ok: bool) -> str:
    return "yes" if ok else "NO"


def verdict_rows(res: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """(metric, value, floor, ok) rows of the summary table."""
    rows = [
        (
            f"{p}: RSS end of minute 1 -> end (MB)",
            f"{r['warm_mb']:.1f} -> {r['end_mb']:.1f} ({r['growth_mb']:+.1f} MB, "
            f"{r['growth_pct']:+.1f} %; fit {r['slope_mb_per_min']:+.2f} MB/min)",
            f"growth < {FLAT_MB:.0f} MB",
            _yes(r["flat"]),
        )
        for p, r in res["rss"].items()
    ]
    n, d = res["published"], res["decisions"]
    return [
        *rows,
        (
            "log lines after minute 1, all processes",
            str(res["log_lines_steady"]),
            f"< {LOG_LINE_LIMIT}",
            _yes(res["quiet_logs"]),
        ),
        (
            "decisions received / readings published",
            f"{d:,} / {n:,} = {res['decisions_per_reading']:.4f}",
            "-",
            "-",
        ),
        (
            "achieved rate (readings/s)",
            f"{res['achieved_rate']:.1f} of {res['config']['rate']}",
            "-",
            "-",
        ),
    ]


def render(res: Mapping[str, Any]) -> tuple[Table, str]:
    rows = verdict_rows(res)
    cfg = res["config"]
    table = Table(title=f"Roost soak: {cfg['minutes']:g} min at {cfg['rate']} readings/s")
    for col in ("metric", "value", "floor", "ok"):
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    m, load, logs = res["machine"], res["load_avg_1min"], res["logs"]
    sections = [
        f"# Soak\n\n{cfg['minutes']:g} minutes at {cfg['rate']} readings/s over "
        f"{cfg['areas']} areas, stack logging at {cfg['log_level']}; warm-up "
        f"{cfg['warmup_s']} s, samples every {cfg['sample_s']} s.\n\nMachine: {m['cpu']}, "
        f"{m['cores']} cores, {m['memory_gib']} GiB, {m['platform']}, Python {m['python']}, "
        f"{m['broker']}; {m['date']}; 1-minute load average {load['start']:.1f} at the start, "
        f"{load['end']:.1f} at the end.",
        markdown_table(
            ["metric", "value", "floor", "ok"],
            [(a, b, c, "**NO**" if d == "NO" else d) for a, b, c, d in rows],
        ),
        "## Log lines per process\n\n"
        + markdown_table(
            ["process", "start-up + warm-up", "after minute 1", "most frequent after minute 1"],
            [
                (
                    p,
                    v["warmup"]["lines"],
                    v["steady"]["lines"],
                    "; ".join(f"`{msg}` x{n}" for msg, n in v["steady"]["top"]) or "-",
                )
                for p, v in logs.items()
            ],
        ),
        "## Hub counters at the end\n\n"
        + markdown_table(
            ["counter", "value"], [(k, f"{v:,.0f}") for k, v in res["hub_counters"].items()]
        ),
    ]
    return table, "\n\n".join(sections)


def plot(res: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = res["samples"]
    minutes = [s["t"] / 60 for s in samples]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    for p in SAMPLED:
        top.plot(minutes, [s["rss_mb"][p] for s in samples], "o-", ms=3, label=p)
    top.set_ylabel("RSS (MB)")
    top.set_title(f"Roost soak at {res['config']['rate']} readings/s")
    for name in ("published", "decisions"):
        rates = [
            (b[name] - a[name]) / max(b["elapsed"] - a["elapsed"], 1e-9)
            for a, b in pairwise(samples)
        ]
        bottom.plot(minutes[1:], rates, label=f"{name}/s")
    bottom.set_ylabel("per second")
    bottom.set_xlabel("minutes into the load")
    for ax in (top, bottom):
        ax.axvline(WARMUP_SECONDS / 60, color="grey", ls=":", label="end of warm-up")
        ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- the run ----------------------------------------------------------------------


def start_stack(home: Path) -> Stack:
    """A fresh stack like `roost run`'s, under ``home`` (emptied first)."""
    shutil.rmtree(home, ignore_errors=True)
    stack = Stack(home, hub_id="soak", log_level=LOG_LEVEL)
    stack.start_all()
    return stack


def log_sizes(stack: Stack) -> dict[str, int]:
    return {p: stack.procs[p].log_path.stat().st_size for p in LOGGED}


def take_sample(stack: Stack, t: int, elapsed: float, counts: Counts) -> Sample:
    dead = [name for name, proc in stack.procs.items() if not proc.alive()]
    if dead:
        tails = "\n".join(f"--- {n}:\n{stack.procs[n].log_tail()}" for n in dead)
        raise SoakError(f"{', '.join(dead)} exited during the soak:\n{tails}")
    rss = {p: psutil.Process(stack.procs[p].popen.pid).memory_info().rss / 2**20 for p in SAMPLED}
    return Sample(t, round(elapsed, 2), rss, counts.published, counts.decisions)


async def count_decisions(sub: aiomqtt.Client, counts: Counts) -> None:
    async for _ in sub.messages:
        counts.decisions += 1


async def wait_quiet(counts: Counts) -> None:
    """Until no decision arrived for QUIET_SECONDS (the hub drained), at most a limit."""
    deadline = time.monotonic() + DRAIN_LIMIT_SECONDS
    last, since = counts.decisions, time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < QUIET_SECONDS:
        await asyncio.sleep(0.1)
        if counts.decisions != last:
            last, since = counts.decisions, time.monotonic()


def _status(counts: Counts, sample: Sample) -> str:
    hub = sample.rss_mb["hub"]
    return f"{counts.published:,} readings, {counts.decisions:,} decisions, hub {hub:.0f} MB"


async def load(stack: Stack, seconds: int, rate: int, progress: Progress) -> Run:
    """Publish ``rate`` readings/s for ``seconds`` (one paced chunk per second), sampling."""
    values = sample_readings(REPLAY_ROWS * len(SENSOR_KINDS))
    run = Run()
    run.samples.append(take_sample(stack, 0, 0.0, run.counts))
    task = progress.add_task("warm-up", total=seconds)
    async with (
        mqtt.client("127.0.0.1", stack.broker_port, identifier="soak-sub") as sub,
        mqtt.client("127.0.0.1", stack.broker_port, identifier="soak-pub") as pub,
    ):
        # QoS 0 on the measuring side, as in bench.e2e: its PUBACKs would only load the CPUs.
        await sub.subscribe(decisions_filter(stack.hub_id), qos=0)
        reader = asyncio.create_task(count_decisions(sub, run.counts))
        start = time.perf_counter()
        sent_at: dict[str, float] = {}  # paced_publish's record; one second's worth at a time
        for k in range(seconds):
            await asyncio.sleep(max(0.0, start + k - time.perf_counter()))
            chunk = [reading_message(i, values) for i in range(k * rate, (k + 1) * rate)]
            # Paced on the run's schedule, not the chunk's: a late second catches up.
            await paced_publish(pub, chunk, rate, sent_at, start=start + k)
            sent_at.clear()
            run.counts.published += len(chunk)
            t = k + 1
            if t % SAMPLE_SECONDS == 0 or t == seconds:
                run.samples.append(take_sample(stack, t, time.perf_counter() - start, run.counts))
            if t == WARMUP_SECONDS:
                run.warm_offsets = log_sizes(stack)
            phase = "warm-up" if t < WARMUP_SECONDS else "steady"
            progress.update(
                task, advance=1, description=f"{phase}: {_status(run.counts, run.samples[-1])}"
            )
        run.elapsed = time.perf_counter() - start
        await wait_quiet(run.counts)
        run.end_offsets = log_sizes(stack)
        reader.cancel()
    return run


def read_logs(stack: Stack, run: Run) -> dict[str, dict[str, Any]]:
    out = {}
    for p in LOGGED:
        path = stack.procs[p].log_path
        warm, end = run.warm_offsets[p], run.end_offsets[p]
        out[p] = {
            "warmup": log_summary(read_span(path, 0, warm)),
            "steady": log_summary(read_span(path, warm, end)),
        }
    return out


def scrape_hub(stack: Stack) -> dict[str, float]:
    port = stack.procs["hub"].info["metrics_port"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return hub_counters(r.read().decode())


async def soak(home: Path, seconds: int, rate: int) -> dict[str, Any]:
    console.print(f"[bold]soak:[/] starting the stack under {home} ...")
    stack = start_stack(home)
    try:
        with Progress(
            TextColumn("{task.description}"), BarColumn(), TimeRemainingColumn(), console=console
        ) as progress:
            run = await load(stack, seconds, rate, progress)
        res = summarize(run, read_logs(stack, run), rate, scrape_hub(stack))
    finally:
        stack.stop()
    return res


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--minutes", type=float, default=10.0, help="length of the load (default 10)"
    )
    parser.add_argument("--rate", type=int, default=300, help="readings per second (default 300)")
    args = parser.parse_args(argv)
    if round(args.minutes * 60) < WARMUP_SECONDS + SAMPLE_SECONDS:
        least = WARMUP_SECONDS + SAMPLE_SECONDS
        parser.error(f"--minutes: at least {least} s (the warm-up minute, then a sample)")
    if args.rate < 1:
        parser.error("--rate: at least 1 reading per second")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    load_before = os.getloadavg()[0]
    res = asyncio.run(soak(HOME, round(args.minutes * 60), args.rate))
    res["machine"] = machine_info()
    # The machine is shared: how busy it was tells how far to trust the figures.
    res["load_avg_1min"] = {"start": load_before, "end": os.getloadavg()[0]}
    js, mdp = write("soak", res, "")  # the raw results first, whatever happens next
    table, md = render(res)
    console.print(table)
    js, mdp = write("soak", res, md)
    png = mdp.with_suffix(".png")
    plot(res, png)
    console.print(f"written: {js}, {mdp}, {png}; logs in {HOME / 'log'}")
    return 0 if res["flat_rss"] and res["quiet_logs"] else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (SoakError, StackError) as e:
        console.print(f"[red]soak failed:[/] {e}")
        sys.exit(2)
