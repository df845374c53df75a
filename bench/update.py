"""``python -m bench.update``: signed model updates and hot swaps, measured.

1. TUF: refresh + verify + download + install of a 1 MB bundle (a real model whose card
   is padded to 1 MB) from a local directory and over HTTP, each from a fresh hub
   (empty metadata), median of repeats; the raw copy of the same bytes is the baseline.
2. Hot swap under load: a real inference service (separate process, mTLS) takes an open
   loop of 500 ``Predict``/s for the whole run while the active version is flipped in
   the registry every 2 s; failed calls (floor: 0), latency percentiles against the
   same load without swaps, and how long each flip takes to reach callers.
3. The health gate against validly signed bad models under live Predict traffic
   (``bench/update_gate.py``): per bad model class, the time from Stage to its refusal,
   or from the start of shadow to its rollback, and what callers saw.

Results: bench/results/update.{json,md}, with the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import http.server
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc

from bench.machine import machine_info
from bench.report import markdown_table, percentile, write
from bench.update_gate import callers_ok, gate_bench, render_gate
from cli.stack import Stack
from cli.tuf_repo import ModelRepository
from models.manifest import MANIFEST_FILE, shipped_models_dir
from roost.common.v1 import common_pb2
from roost.inference.v1 import inference_service_pb2 as inf_pb
from roost.inference.v1 import inference_service_pb2_grpc as inf_grpc
from services.kit.auth import Role
from services.kit.client import aio_channel
from services.modelstore.bundle import pack_bundle
from services.modelstore.registry import Registry
from services.update.tuf_client import ModelUpdater

BUNDLE_BYTES = 1024 * 1024
RATE = 500
FEATURES = [22.5, 27.0, 520.0, 950.0, -0.5, -0.87]


def model_copy(tmp: Path, version: str, pad_to: int = 0) -> Path:
    dst = tmp / f"occupancy-{version}"
    shutil.copytree(shipped_models_dir() / "occupancy", dst)
    raw = json.loads((dst / MANIFEST_FILE).read_text())
    raw["version"] = version
    (dst / MANIFEST_FILE).write_text(json.dumps(raw))
    if pad_to:
        card = dst / "MODEL_CARD.md"
        size = sum(p.stat().st_size for p in dst.iterdir())
        card.write_text(card.read_text() + "\n" + "x" * max(0, pad_to - size) + "\n")
    return dst


@contextmanager
def http_server(root: Path) -> Iterator[str]:
    handler = functools.partial(_QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def tuf_bench(tmp: Path, repeats: int) -> dict[str, Any]:
    repo = ModelRepository.create(tmp / "repo", tmp / "keys")
    bundle = pack_bundle(model_copy(tmp, "1.1.0", BUNDLE_BYTES), tmp / "bundle.tar")
    repo.publish("occupancy", bundle.path, "1.1.0")
    trusted = tmp / "root.json"
    shutil.copy(repo.root_path, trusted)
    out: dict[str, Any] = {"bundle_bytes": bundle.size_bytes}
    baseline: list[float] = []
    for i in range(repeats):
        t0 = time.perf_counter()
        shutil.copy(bundle.path, tmp / f"copy-{i}.tar")
        baseline.append(time.perf_counter() - t0)
    out["raw_copy_s"] = statistics.median(baseline)
    with http_server(tmp / "repo") as url:
        for name, source in (("directory", str(tmp / "repo")), ("http", url)):
            steps: dict[str, list[float]] = {"refresh": [], "download": [], "install": []}
            for i in range(repeats):
                hub = tmp / f"hub-{name}-{i}"
                updater = ModelUpdater(
                    hub / "metadata",
                    hub / "cache",
                    source,
                    trusted_root=trusted,
                    max_bundle_bytes=8 * BUNDLE_BYTES,
                )
                t0 = time.perf_counter()
                updater.refresh()
                t1 = time.perf_counter()
                target = updater.latest("occupancy")
                assert target is not None
                updater.download(target)
                t2 = time.perf_counter()
                updater.install(target, hub / "models")
                t3 = time.perf_counter()
                steps["refresh"].append(t1 - t0)
                steps["download"].append(t2 - t1)
                steps["install"].append(t3 - t2)
            out[name] = {k: statistics.median(v) for k, v in steps.items()}
            out[name]["total"] = sum(out[name][k] for k in steps)
    return out


async def paced_load(
    stub: inf_grpc.InferenceServiceAsyncStub, seconds: float, versions: list[tuple[float, str]]
) -> dict[str, Any]:
    """Open-loop Predict at RATE/s (latency from each call's scheduled time)."""
    request = inf_pb.PredictRequest(
        model_name="occupancy",
        input=common_pb2.Tensor(
            dtype=common_pb2.DATA_TYPE_FLOAT32, shape=[6], float_values=FEATURES
        ),
        entity_id="occupancy.bench",
    )
    latencies: list[float] = []
    failures: list[str] = []
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.1
    n = int(seconds * RATE)

    async def one(at: float) -> None:
        await asyncio.sleep(max(0.0, at - loop.time()))
        try:
            resp = await stub.Predict(request, timeout=2)
            done = loop.time()
            latencies.append((done - at) * 1e3)
            versions.append((time.monotonic(), resp.prediction.model.version))
        except grpc.aio.AioRpcError as e:
            failures.append(e.code().name)

    await asyncio.gather(*(one(start + i / RATE) for i in range(n)))
    return {
        "calls": n,
        "failed": len(failures),
        "failures": sorted(set(failures)),
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies) if latencies else float("nan"),
    }


async def swap_bench(tmp: Path, seconds: float) -> dict[str, Any]:
    stack = Stack(tmp / "home", hub_id="bench", log_level="WARNING")
    try:
        stack.start_service(Role.INFERENCE)
        registry = Registry(stack.models_dir)
        for v in ("1.1.0", "1.2.0"):
            registry.add_version(model_copy(tmp, v), "tuf")
        channel = aio_channel(
            f"127.0.0.1:{stack.port_of(Role.INFERENCE)}",
            certs_dir=stack.certs_dir,
            role=Role.HUB,
            server_role=Role.INFERENCE,
        )
        stub = inf_grpc.InferenceServiceStub(channel)
        await paced_load(stub, 2, [])  # warm-up
        quiet = await paced_load(stub, seconds, [])
        versions: list[tuple[float, str]] = []
        flips: list[tuple[float, str]] = []

        async def flipper() -> None:
            order = ["1.1.0", "1.2.0", "1.0.0"]
            i = 0
            await asyncio.sleep(1.0)
            while True:
                version = order[i % len(order)]
                await asyncio.to_thread(registry.activate, "occupancy", version)
                flips.append((time.monotonic(), version))
                i += 1
                await asyncio.sleep(2.0)

        task = asyncio.create_task(flipper())
        swapping = await paced_load(stub, seconds, versions)
        task.cancel()
        await channel.close()
        lags = []
        for at, version in flips:
            seen = next((t for t, v in versions if t >= at and v == version), None)
            if seen is not None:
                lags.append((seen - at) * 1e3)
        swapping["swaps"] = len(flips)
        swapping["swap_to_callers_ms"] = {
            "p50": percentile(lags, 50),
            "max": max(lags) if lags else float("nan"),
            "n": len(lags),
        }
        return {"rate": RATE, "seconds": seconds, "without_swaps": quiet, "with_swaps": swapping}
    finally:
        stack.stop()


def render(res: dict[str, Any]) -> str:
    m = res["machine"]
    t = res["tuf"]
    rows = [
        (
            name,
            f"{t[name]['refresh'] * 1e3:.0f}",
            f"{t[name]['download'] * 1e3:.0f}",
            f"{t[name]['install'] * 1e3:.0f}",
            f"{t[name]['total'] * 1e3:.0f}",
        )
        for name in ("directory", "http")
    ]
    s = res["swap"]
    w, q = s["with_swaps"], s["without_swaps"]
    swap_rows = [
        ("without swaps", q["calls"], q["failed"], f"{q['p50_ms']:.2f}", f"{q['p99_ms']:.2f}", "-"),
        (
            f"with {w['swaps']} swaps",
            w["calls"],
            w["failed"],
            f"{w['p50_ms']:.2f}",
            f"{w['p99_ms']:.2f}",
            f"p50 {w['swap_to_callers_ms']['p50']:.0f}, max {w['swap_to_callers_ms']['max']:.0f}",
        ),
    ]
    ok = w["failed"] == 0
    return "\n\n".join(
        [
            "# Update benchmark",
            f"Machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores; "
            f"Python {m.get('python', '?')}; {m.get('date', '?')}. Shared machine: medians.",
            f"## 1. TUF: refresh + verify + download + install of a "
            f"{t['bundle_bytes'] / 1e6:.2f} MB bundle (ms, median of {res['repeats']}, fresh hub "
            f"each time)\n\nBaseline: a plain copy of the same file takes "
            f"{t['raw_copy_s'] * 1e3:.2f} ms.\n\n"
            + markdown_table(["source", "refresh", "download", "install", "total"], rows),
            f"## 2. Hot swap under {s['rate']} Predict/s ({s['seconds']:.0f} s each, open loop, "
            "real inference process over mTLS)\n\n"
            + markdown_table(
                ["run", "calls", "failed", "p50 ms", "p99 ms", "flip -> callers ms"], swap_rows
            )
            + f"\n\nFloor: 0 failed Predict calls during swaps: {'PASS' if ok else '**FAIL**'}.",
            render_gate(res["gate"]),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.update", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-fail", action="store_true")
    args = p.parse_args(argv)
    repeats, seconds = (2, 4.0) if args.quick else (5, 20.0)
    with tempfile.TemporaryDirectory(prefix="roost-bench-update-") as tmp:
        print("TUF refresh/verify/install of a 1 MB bundle ...", flush=True)
        tuf = tuf_bench(Path(tmp) / "tuf", repeats)
        print(f"hot swap under {RATE} Predict/s ...", flush=True)
        swap = asyncio.run(swap_bench(Path(tmp) / "swap", seconds))
        print("health gate against bad models under load ...", flush=True)
        gate = gate_bench(Path(tmp) / "gate", rounds=1 if args.quick else 3)
    res = {
        "machine": machine_info(),
        "repeats": repeats,
        "tuf": tuf,
        "swap": swap,
        "gate": gate,
        "quick": args.quick,
    }
    md = render(res)
    print(md)
    if not args.quick:
        write("update", res, md)
    failed = swap["with_swaps"]["failed"] > 0 or not callers_ok(gate)
    return 1 if failed and not args.no_fail else 0


if __name__ == "__main__":
    sys.exit(main())
