"""The design's transport floor, measured in the same run as Roost's end to end.

A decision is two MQTT hops (reading in, decision out), two gRPC round trips on long-lived
mTLS streams (hub -> inference, hub -> audit) and one fsync (the audit log, before the
decision is published). No implementation of this design on grpcio can do less, so the same run
measures each piece raw, with nothing of Roost in it:

* a **gRPC stream echo**: a bidi stream on loopback with the stack's own mTLS
  certificates, one small message each way per round trip, paced at the run's rate;
  its p50 and CPU per round trip on both ends (a separate server process, this process
  the client);
* an **fsync**: a 4 KiB append and ``os.fsync`` in the stack's directory.

``floor_p50 = 2 x broker echo p50 + 2 x gRPC round trip p50 + fsync p50`` and
``floor_cpu = 2 x (server + client CPU per gRPC round trip)`` (MQTT parsing, inference,
SQLite and JSON left out: a lower bound). ``python -m bench.transport_floor`` prints one
measurement on its own.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import grpc
from grpc import aio

from bench.cost import cpu_seconds
from bench.report import percentile
from services.kit.auth import Role
from services.kit.certs import ensure_certs
from services.kit.client import aio_channel
from services.kit.server import server_credentials

SERVICE: Final = "roost.bench.Echo"
METHOD: Final = f"/{SERVICE}/Stream"
#: About a serialized PredictBatch request of one reading.
PAYLOAD: Final = b"r" * 200
WARMUP: Final = 200
FSYNC_BYTES: Final = 4096


async def _serve(certs_dir: Path) -> None:
    async def stream(requests: AsyncIterator[bytes], _ctx: Any) -> AsyncIterator[bytes]:
        async for message in requests:
            yield message

    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"Stream": grpc.stream_stream_rpc_method_handler(stream)}
    )
    server = aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_secure_port("127.0.0.1:0", server_credentials(certs_dir, Role.INFERENCE))
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


class EchoServer:
    """The echo server process, for the life of a ``with`` block."""

    def __init__(self, certs_dir: Path) -> None:
        self.certs_dir = certs_dir
        self._proc: subprocess.Popen[str] | None = None
        self.port = 0

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def __enter__(self) -> EchoServer:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bench.transport_floor", "serve", str(self.certs_dir)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().strip()
        if not line.isdigit():
            self._proc.kill()
            raise RuntimeError(f"the gRPC echo server did not start (said {line!r})")
        self.port = int(line)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()


async def grpc_echo(server: EchoServer, rate: int, seconds: float) -> dict[str, Any]:
    """Round trips paced at ``rate``/s for ``seconds``: latencies (ms) and CPU per round
    trip (ms) of the server and of this process."""
    async with aio_channel(
        f"127.0.0.1:{server.port}",
        certs_dir=server.certs_dir,
        role=Role.HUB,
        server_role=Role.INFERENCE,
    ) as channel:
        call: aio.StreamStreamCall[bytes, bytes] = channel.stream_stream(METHOD)()

        async def round_trip() -> None:
            await call.write(PAYLOAD)
            await call.read()

        for _ in range(WARMUP):
            await round_trip()
        n = int(rate * seconds)
        latencies = []
        server0, client0 = cpu_seconds(server.pid), time.process_time()
        start = time.perf_counter()
        for i in range(n):
            t0 = time.perf_counter()
            await round_trip()
            latencies.append((time.perf_counter() - t0) * 1000)
            delay = start + (i + 1) / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        server1, client1 = cpu_seconds(server.pid), time.process_time()
        await call.done_writing()
    return {
        "latencies_ms": latencies,
        "server_cpu_ms": (server1 - server0) * 1000 / n,
        "client_cpu_ms": (client1 - client0) * 1000 / n,
    }


def fsync_ms(directory: Path, n: int = 300) -> list[float]:
    """``n`` appends of 4 KiB, each followed by ``os.fsync``: latencies (ms)."""
    block = os.urandom(FSYNC_BYTES)
    out = []
    with tempfile.NamedTemporaryFile(dir=directory, prefix="fsync-") as f:
        for _ in range(n):
            t0 = time.perf_counter()
            f.write(block)
            f.flush()
            os.fsync(f.fileno())
            out.append((time.perf_counter() - t0) * 1000)
    return out


def design_floor(
    echo_p50: float, grpc_p50: float, fsync_p50: float, grpc_cpu: float
) -> dict[str, float]:
    """The latency and CPU no implementation of the design can beat (module docstring)."""
    return {
        "floor_p50_ms": 2 * echo_p50 + 2 * grpc_p50 + fsync_p50,
        "floor_cpu_ms": 2 * grpc_cpu,
    }


async def measure(server: EchoServer, directory: Path, rate: int, seconds: float) -> dict[str, Any]:
    """The gRPC echo and fsync of one repeat, summarized."""
    echo = await grpc_echo(server, rate, seconds)
    sync = await asyncio.to_thread(fsync_ms, directory)
    return {
        "grpc_p50": percentile(echo["latencies_ms"], 50),
        "grpc_p99": percentile(echo["latencies_ms"], 99),
        "grpc_server_cpu_ms": echo["server_cpu_ms"],
        "grpc_client_cpu_ms": echo["client_cpu_ms"],
        "grpc_cpu_ms": echo["server_cpu_ms"] + echo["client_cpu_ms"],
        "fsync_p50": percentile(sync, 50),
    }


def main(argv: list[str]) -> int:
    if argv[:1] == ["serve"]:  # the echo server process (EchoServer starts it)
        asyncio.run(_serve(Path(argv[1])))
        return 0
    parser = argparse.ArgumentParser(
        prog="python -m bench.transport_floor", description=__doc__.split("\n")[0]
    )
    parser.add_argument("rate", nargs="?", type=int, default=200, help="round trips per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.seconds <= 0:
        parser.error("rate and --seconds must be > 0")
    with tempfile.TemporaryDirectory(prefix="roost-floor-") as tmp:
        certs = Path(tmp) / "certs"
        ensure_certs(certs)
        with EchoServer(certs) as server:
            got = asyncio.run(measure(server, Path(tmp), args.rate, args.seconds))
    for k, v in got.items():
        print(f"{k}: {v:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
