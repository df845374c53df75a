"""Where the time of a decision goes: per-process CPU time and the hub's stage times.

Robust to a loaded machine (unlike wall-clock latency): the CPU time a process spent
(``/proc/<pid>/stat``, user + system, its threads included) between two moments, divided
by the decisions published in between. The hub's ``roost_hub_stage_seconds`` histograms
(sum and count per stage) are scraped from its metrics endpoint at the same two moments,
so a run reports the mean time per batch in each stage of the same run.

``python -m bench.cost [rate] [seconds] [--profile]`` drives one steady load through a
fresh stack and prints both; ``--profile`` also records each process with py-spy
(speedscope JSON in bench/results/profiles/).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SERVING = ("hub", "inference", "audit")
EXTRA = [a for a in os.environ.get("PYSPY_EXTRA", "").split() if a]
PROFILES = Path(__file__).resolve().parent / "results" / "profiles"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` (all its threads) so far."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    # The command name (field 2) may hold spaces: split after its closing parenthesis.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


RAPL = Path("/sys/class/powercap")


def energy_uj() -> int | None:
    """Package energy so far (RAPL, microjoules summed over packages), or None where the
    machine does not expose it (e.g. a VM): then energy per decision is "unavailable"."""
    zones = sorted(RAPL.glob("intel-rapl:[0-9]*/energy_uj")) if RAPL.is_dir() else []
    total = 0
    for zone in zones:
        try:
            total += int(zone.read_text())
        except (OSError, ValueError):
            return None
    return total if zones else None


def idle_cpu(pids: dict[str, int], seconds: float) -> dict[str, Any]:
    """CPU of each process over ``seconds`` with no readings: percent of one core."""
    before = {n: cpu_seconds(p) for n, p in pids.items()}
    t0 = time.monotonic()
    time.sleep(seconds)  # the measurement window itself, not a synchronisation
    wall = time.monotonic() - t0
    percent = {n: 100 * (cpu_seconds(p) - before[n]) / wall for n, p in pids.items()}
    return {"seconds": wall, "percent_of_one_core": percent, "total_percent": sum(percent.values())}


_SAMPLE = re.compile(r"^(\w+)\{([^}]*)\} ([0-9.eE+-]+|NaN)$")


def scrape(port: int) -> dict[tuple[str, str], float]:
    """Prometheus samples of the hub's endpoint: {(name, labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m:
            out[(m.group(1), m.group(2))] = float(m.group(3))
        elif line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[(name, "")] = float(value)
            except ValueError:
                continue
    return out


@dataclass(frozen=True)
class Snapshot:
    at: float
    cpu: dict[str, float]
    metrics: dict[tuple[str, str], float]
    energy_uj: int | None = None


def snapshot(pids: dict[str, int], metrics_port: int) -> Snapshot:
    return Snapshot(
        time.monotonic(),
        {n: cpu_seconds(p) for n, p in pids.items()},
        scrape(metrics_port),
        energy_uj(),
    )


def _delta(a: Snapshot, b: Snapshot, name: str, labels: str = "") -> float:
    return b.metrics.get((name, labels), 0.0) - a.metrics.get((name, labels), 0.0)


def published(s: Snapshot) -> float:
    return sum(
        v
        for (name, labels), v in s.metrics.items()
        if name == "roost_hub_decisions_total" and 'outcome="published"' in labels
    )


def readings(s: Snapshot) -> float:
    return s.metrics.get(("roost_hub_readings_total", ""), 0.0)


def cost(a: Snapshot, b: Snapshot) -> dict[str, Any]:
    """CPU per decision per process, stage means per batch, between two snapshots."""
    decisions = published(b) - published(a)
    wall = b.at - a.at
    per = max(decisions, 1.0)
    cpu = {n: b.cpu[n] - a.cpu[n] for n in a.cpu}
    serving = sum(cpu[n] for n in SERVING if n in cpu)
    stages: dict[str, dict[str, float]] = {}
    for name, labels in b.metrics:
        if name != "roost_hub_stage_seconds_count":
            continue
        stage = labels.split('"')[1]
        n = _delta(a, b, "roost_hub_stage_seconds_count", labels)
        total = _delta(a, b, "roost_hub_stage_seconds_sum", labels)
        stages[stage] = {"batches": n, "mean_ms": 1000 * total / n if n else float("nan")}
    batches = _delta(a, b, "roost_hub_batch_size_count")
    latency_n = _delta(a, b, "roost_hub_decision_latency_seconds_count")
    latency_sum = _delta(a, b, "roost_hub_decision_latency_seconds_sum")
    return {
        "seconds": wall,
        "decisions": decisions,
        "readings": readings(b) - readings(a),
        "cpu_ms_per_decision": {n: 1000 * c / per for n, c in cpu.items()},
        "serving_cpu_ms_per_decision": 1000 * serving / per,
        "cpu_s_per_1000_decisions": serving / per * 1000,
        "cpu_percent_of_one_core": {n: 100 * c / wall for n, c in cpu.items()},
        "batches": batches,
        "mean_batch": _delta(a, b, "roost_hub_batch_size_sum") / batches if batches else 0.0,
        "stage_mean_ms": stages,
        "hub_latency_mean_ms": 1000 * latency_sum / latency_n if latency_n else float("nan"),
        "energy_mj_per_decision": (
            (b.energy_uj - a.energy_uj) / 1000 / per
            if a.energy_uj is not None and b.energy_uj is not None
            else "unavailable"
        ),
        "load_average": load_average(),
    }


class Profiler:
    """py-spy attached to each process for the duration of a ``with`` block."""

    def __init__(self, pids: dict[str, int], tag: str, rate: int = 200) -> None:
        self.pids = pids
        self.tag = tag
        self.rate = rate
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Profiler:
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        PROFILES.mkdir(parents=True, exist_ok=True)
        for name, pid in self.pids.items():
            out = PROFILES / f"{self.tag}-{name}.speedscope.json"
            self.procs.append(
                subprocess.Popen(
                    [
                        py_spy,
                        "record",
                        "--pid",
                        str(pid),
                        "--rate",
                        str(self.rate),
                        "--format",
                        "speedscope",
                        "--output",
                        str(out),
                        "--nonblocking",
                        *EXTRA,
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            p.send_signal(signal.SIGINT)
        for p in self.procs:
            p.wait(timeout=60)


async def measure(rate: int, seconds: int, profile: bool, tag: str) -> dict[str, Any]:
    from bench.e2e import e2e_run, sample_readings
    from cli.stack import Stack
    from services.kit.auth import Role

    values = sample_readings(4000)
    with (
        tempfile.TemporaryDirectory(prefix="roost-cost-") as tmp,
        Stack(Path(tmp), hub_id="bench", log_level="WARNING") as stack,
    ):
        stack.start_broker()
        stack.start_service(Role.AUDIT)
        stack.start_service(Role.INFERENCE)
        info = stack.start_hub()
        pids = {n: stack.procs[n].popen.pid for n in SERVING}
        await e2e_run(stack, rate, 3, values)  # warm up
        a = snapshot(pids, int(info["metrics_port"]))
        if profile:
            with Profiler(pids, tag):
                run = await e2e_run(stack, rate, seconds, values)
        else:
            run = await e2e_run(stack, rate, seconds, values)
        b = snapshot(pids, int(info["metrics_port"]))
    res = cost(a, b)
    res["e2e_ms"] = {"p50": run.p(50), "p99": run.p(99)}
    return res


def main() -> int:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    rate = int(args[0]) if args else 300
    seconds = int(args[1]) if len(args) > 1 else 30
    tag = args[2] if len(args) > 2 else "load"
    res = asyncio.run(measure(rate, seconds, "--profile" in sys.argv, tag))
    import json

    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
