"""``python -m bench.fleet``: fleet rounds with 50 SuperNodes on this machine, with and
without SecAgg+ (``make bench-fleet``).

The cloud side is real: a ``flower-superlink`` over TLS (its certificate from the
server's own CA, as ``roost fleet serve`` issues it) with its link state in memory
(``--database :flwr-in-memory:``), starting its own ``flower-superexec`` and a
``flwr-serverapp`` per run, running Roost's ServerApp (``bench/fleet_server_app.py``:
``fleet.server_app.main`` with SecAgg+, or the same strategy over a plain fit). The hubs
are real ``flower-supernode`` processes (each its own ``flower-superexec``, starting a
``flwr-clientapp`` per message) whose light ClientApp (``bench/fleet_hub_app.py``) sends a
clipped and noised delta of the occupancy head's size without a personalization service.

Measured per round (the ServerApp's round report): its time; the server's CPU seconds
(SuperLink + SuperExec + ServerApp, sampled every 0.25 s between round reports) and peak
RSS; the bytes each hub sent and received (Flower's serialized messages, measured in the
ClientApp); and once, the SuperLink's RSS per connected SuperNode. Round 1 includes the
ServerApp's own start-up (it imports the accountant): CPU medians are over rounds 2-N.
Everything runs on this machine, hubs included: round times here are bounded by the
hubs' ``flwr-clientapp`` start-ups on the same cores, not by the server.

Results: bench/results/fleet.{json,md}, with the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

from bench.fleet_hub_app import NODE_OUT
from bench.fleet_report import render
from bench.fleet_server_app import SECAGG_KEY
from bench.machine import machine_info
from bench.report import write
from cli.fleet_server import FleetServer, flower_bin, flower_env
from cli.stack import Launch, Stack, free_port
from fleet.hub_node import node_config_arg

ROOT = Path(__file__).resolve().parents[1]
APP_DIR = Path(__file__).resolve().parent / "fleet_app"
MiB = 1024 * 1024
#: Memory left for everyone else on the machine before another ten SuperNodes start.
MIN_FREE = 4 * 1024 * MiB
#: The hub stack's name of the SuperExec serving every SuperNode.
SUPEREXEC = "superexec"


def _tree(pid: int) -> list[psutil.Process]:
    try:
        p = psutil.Process(pid)
        return [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


class ServerMeter:
    """The server process tree's CPU seconds (dead processes counted at their last
    sample) and RSS, sampled every ``period`` seconds in a thread."""

    def __init__(self, pid: int, period: float = 0.25) -> None:
        self.pid = pid
        self.period = period
        self._cpu: dict[int, float] = {}
        self._names: dict[int, str] = {}
        self._lock = threading.Lock()
        self._peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> tuple[float, int]:
        rss = 0
        for p in _tree(self.pid):
            try:
                with p.oneshot():
                    t = p.cpu_times()
                    mem = p.memory_info().rss
                    name = p.name()
            except psutil.Error:
                continue
            rss += mem
            with self._lock:
                self._cpu[p.pid] = t.user + t.system
                self._names[p.pid] = name
        with self._lock:
            self._peak_rss = max(self._peak_rss, rss)
            return sum(self._cpu.values()), rss

    def take_peak(self) -> int:
        """The peak RSS since the last call (and start a new window)."""
        with self._lock:
            peak, self._peak_rss = self._peak_rss, 0
        return peak

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.sample()

    def __enter__(self) -> ServerMeter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _report(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def start_hubs(stack: Stack, server: FleetServer, n: int, out_dir: Path) -> list[Path]:
    """``n`` SuperNodes, started ten at a time (each imports Flower on start-up), then
    the one SuperExec that runs their ClientApp tasks (``bench/fleet_superexec.py``)."""
    assert server.tls is not None
    outs = []
    nodes: dict[str, str] = {}
    for batch in range(0, n, 10):
        free = psutil.virtual_memory().available
        if free < MIN_FREE:
            raise RuntimeError(
                f"{free / MiB:.0f} MiB available after {batch} SuperNodes: stopping"
                " before the machine swaps (others share it)"
            )
        names = []
        for i in range(batch, min(batch + 10, n)):
            out = out_dir / f"hub{i}.jsonl"
            outs.append(out)
            port = free_port()
            home = stack.home / "flwr" / f"hub{i}"
            nodes[f"127.0.0.1:{port}"] = str(home)
            argv = [
                flower_bin("flower-supernode"),
                "--isolation",
                "process",  # its tasks run by bench/fleet_superexec.py
                "--root-certificates",
                str(server.tls.ca),
                "--superlink",
                server.address,
                "--port",
                str(port),
                "--node-config",
                node_config_arg({NODE_OUT: str(out)}),
            ]
            env = flower_env(home)
            stack._spawn(f"hub{i}", Launch(argv, env, ready_port=port, detaches_children=True))
            names.append(f"hub{i}")
        deadline = time.monotonic() + 300
        while not all(stack.poll_ready(name) for name in names):
            if time.monotonic() > deadline:
                raise RuntimeError(f"SuperNodes {names} not ready after 300 s")
            time.sleep(0.2)
    argv = [sys.executable, "-m", "bench.fleet_superexec", "--parent-pid", str(os.getpid())]
    for address, flwr_home in nodes.items():
        argv += ["--node", f"{address}={flwr_home}"]
    stack._spawn(SUPEREXEC, Launch(argv, flower_env(stack.home / "flwr"), detaches_children=True))
    return outs


def registered(server: FleetServer) -> int:
    out = json.loads(server.flwr("supernode", "list", "--format", "json"))
    return len([n for n in out["nodes"] if str(n.get("status", "online")).lower() == "online"])


def idle_cpu(meter: ServerMeter, seconds: float = 20.0) -> float:
    """The server's CPU seconds per second with every hub connected and no run: what
    the SuperNodes' polling and heartbeats cost it, part of every round's CPU."""
    cpu0, _ = meter.sample()
    time.sleep(seconds)
    cpu1, _ = meter.sample()
    return round((cpu1 - cpu0) / seconds, 3)


def run_mode(
    server: FleetServer,
    meter: ServerMeter,
    home: Path,
    *,
    secagg: bool,
    hubs: int,
    rounds: int,
    t: int,
) -> list[dict[str, Any]]:
    """One run of ``rounds`` rounds; per round: time, participants, server CPU, peak RSS."""
    mode = "secagg" if secagg else "plain"
    report = home / f"{mode}-rounds.jsonl"
    run_config = {
        SECAGG_KEY: secagg,
        "rounds": rounds,
        "min-nodes": hubs,
        "min-participants": t,
        "noise-multiplier": 1.0,
        "epsilon-budget": 1e9,  # the bench measures rounds, not the budget
        "stage-timeout": 900.0,  # no hub is dropped for being slow on a loaded box
        "report-path": str(report),
    }
    cpu0, _ = meter.sample()
    meter.take_peak()
    server.submit(run_config, app_dir=APP_DIR)
    load = os.getloadavg()[0]
    rows: list[dict[str, Any]] = []
    deadline = time.monotonic() + 3600
    while time.monotonic() < deadline:
        lines = _report(report)
        done = [r for r in lines if "round" in r and "participants" in r]
        for r in done[len(rows) :]:
            cpu, _ = meter.sample()
            rows.append(
                {
                    "round": r["round"],
                    "participants": r["participants"],
                    "released": r["released"],
                    "seconds": r.get("seconds"),
                    "server_cpu_s": round(cpu - cpu0, 2),
                    "server_peak_rss_mib": round(meter.take_peak() / MiB, 1),
                    "load_1m_start": round(load, 2),
                    "load_1m_end": round(os.getloadavg()[0], 2),
                }
            )
            print(f"  {mode} round {r['round']}: {rows[-1]}", flush=True)
            cpu0, load = cpu, os.getloadavg()[0]
        _guard(hubs)
        if any("ended" in r for r in lines):
            if not any(r.get("ended") == "completed" for r in lines):
                raise RuntimeError(f"{mode} run failed: {lines[-1]}")
            return rows
        time.sleep(0.5)
    raise RuntimeError(f"{mode} run did not end in an hour")


def _guard(hubs: int) -> None:
    """Stop before the machine does: with Flower's own SuperExec per SuperNode, a 50-hub
    run started more ``flwr-clientapp`` processes than it finished (360, 24 GiB
    exhausted). ClientApp tasks are counted whether started by name or forked by
    ``bench/fleet_superexec.py``'s fork server."""
    free = psutil.virtual_memory().available
    apps = 0
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info.get("cmdline") or []
        apps += any(c.endswith("flwr-clientapp") or "forkserver" in c for c in cmd[:3])
    if free < MIN_FREE / 2 or apps > 3 * hubs:
        raise RuntimeError(
            f"stopping: {free / MiB:.0f} MiB available, {apps} flwr-clientapp processes"
            f" for {hubs} hubs"
        )


def bytes_per_hub(outs: list[Path]) -> dict[str, dict[str, list[int]]]:
    """Bytes each hub sent and received per round (summed over the round's messages),
    by mode: SecAgg+ (4 stages) or plain (one fit)."""
    per: dict[tuple[str, int, int], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    kind: dict[tuple[str, int, int], str] = {}
    for out in outs:
        for line in out.read_text().splitlines() if out.is_file() else []:
            m = json.loads(line)
            key = (out.name, int(m["run"]), int(m["round"]))
            if m["stage"] != "plain" or key not in kind:
                kind[key] = "plain" if m["stage"] == "plain" else "secagg"
            per[key]["sent"] += m["sent"]
            per[key]["received"] += m["received"]
    result: dict[str, dict[str, list[int]]] = {
        "secagg": defaultdict(list),
        "plain": defaultdict(list),
    }
    for key, sums in per.items():
        result[kind[key]]["sent"].append(sums["sent"])
        result[kind[key]]["received"].append(sums["received"])
    return result


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
        "n": len(values),
    }


@contextmanager
def fleet(home: Path, hubs: int) -> Iterator[tuple[FleetServer, Stack, list[Path], dict[str, Any]]]:
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
    )  # the bench's Flower apps are modules of this checkout (not installed)
    server_stack = Stack(home / "server", hub_id="fleet-bench")
    hub_stack = Stack(home / "hubs", hub_id="fleet-bench-hubs")
    server = FleetServer(server_stack, database=":flwr-in-memory:")
    try:
        server.start()
        pid = server_stack.procs["superlink"].popen.pid
        time.sleep(5)  # its SuperExec is up
        idle_link = psutil.Process(pid).memory_info().rss
        idle = sum(p.memory_info().rss for p in _tree(pid))
        started = time.monotonic()
        outs = start_hubs(hub_stack, server, hubs, home)
        deadline = time.monotonic() + 300
        while registered(server) < hubs:
            if time.monotonic() > deadline:
                raise RuntimeError("not every SuperNode registered in 300 s")
            time.sleep(1)
        time.sleep(5)  # a heartbeat or two on every node (the steady state)
        connected_link = psutil.Process(pid).memory_info().rss
        connected = sum(p.memory_info().rss for p in _tree(pid))
        nodes = [proc for name, proc in hub_stack.procs.items() if name != SUPEREXEC]
        hub_rss = [sum(p.memory_info().rss for p in _tree(proc.popen.pid)) for proc in nodes]
        # PSS: shared library pages split among the processes that map them.
        hub_pss = [sum(p.memory_full_info().pss for p in _tree(proc.popen.pid)) for proc in nodes]
        superexec = sum(p.memory_info().rss for p in _tree(hub_stack.procs[SUPEREXEC].popen.pid))
        facts = {
            "hubs_started_s": round(time.monotonic() - started, 1),
            "superlink_rss_idle_mib": round(idle / MiB, 1),
            "superlink_rss_connected_mib": round(connected / MiB, 1),
            "superlink_process_rss_idle_mib": round(idle_link / MiB, 1),
            "superlink_process_rss_connected_mib": round(connected_link / MiB, 1),
            "superlink_rss_per_node_kib": round((connected_link - idle_link) / hubs / 1024, 1),
            "supernode_rss_idle_mib": summary([r / MiB for r in hub_rss]),
            "supernode_pss_idle_mib": summary([r / MiB for r in hub_pss]),
            "bench_superexec_rss_idle_mib": round(superexec / MiB, 1),
        }
        yield server, server_stack, outs, facts
    finally:
        hub_stack.stop()
        server_stack.stop()


def _mode_summary(
    rows: list[dict[str, Any]], traffic: dict[str, list[int]], hubs: int
) -> dict[str, Any]:
    steady = rows[1:] or rows  # round 1 includes the ServerApp's start-up
    return {
        "rounds": rows,
        "round_seconds": summary([r["seconds"] for r in rows]),
        "server_cpu_s_per_round": summary([r["server_cpu_s"] for r in steady]),
        "server_cpu_ms_per_hub_round": summary(
            [1000 * r["server_cpu_s"] / max(1, r["participants"]) for r in steady]
        ),
        "server_peak_rss_mib": max(r["server_peak_rss_mib"] for r in rows),
        "participants": [r["participants"] for r in rows],
        "bytes_sent_per_hub_round": summary([float(v) for v in traffic.get("sent", [])] or [0.0]),
        "bytes_received_per_hub_round": summary(
            [float(v) for v in traffic.get("received", [])] or [0.0]
        ),
        "hubs": hubs,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hubs", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--t", type=int, default=25, help="min-participants")
    ap.add_argument("--modes", default="secagg,plain")
    ap.add_argument("--name", default="fleet")
    args = ap.parse_args(argv)
    import flwr

    load_before = round(os.getloadavg()[0], 2)
    data: dict[str, Any] = {
        "machine": machine_info(),
        "flwr": flwr.__version__,
        "hubs": args.hubs,
        "rounds": args.rounds,
        "t": args.t,
        "load_before": load_before,
        "modes": {},
    }
    with tempfile.TemporaryDirectory(
        prefix="roost-fleet-bench-", ignore_cleanup_errors=True
    ) as tmp:
        home = Path(tmp)
        with fleet(home, args.hubs) as (server, server_stack, outs, facts):
            data["facts"] = facts
            print(f"fleet bench: {args.hubs} SuperNodes up: {facts}", flush=True)
            pid = server_stack.procs["superlink"].popen.pid
            with ServerMeter(pid) as meter:
                facts["server_cpu_idle_s_per_s"] = idle_cpu(meter)
                for mode in args.modes.split(","):
                    try:
                        rows = run_mode(
                            server,
                            meter,
                            home,
                            secagg=mode == "secagg",
                            hubs=args.hubs,
                            rounds=args.rounds,
                            t=args.t,
                        )
                    except RuntimeError as e:
                        data.setdefault("errors", {})[mode] = str(e)
                        print(f"fleet bench: {mode}: {e}", flush=True)
                        break
                    data["modes"][mode] = rows
            traffic = bytes_per_hub(outs)
    for mode, rows in list(data["modes"].items()):
        data["modes"][mode] = _mode_summary(rows, traffic[mode], args.hubs)
    md = render(data)
    js, mdp = write(args.name, data, md)
    print(md)
    print(f"wrote {js} and {mdp}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
