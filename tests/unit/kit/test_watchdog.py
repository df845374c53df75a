"""The event-loop watchdog and the probes' health port: a stuck loop fails liveness (and
readiness) while it lasts, answered from gRPC's threads, and recovers with the loop."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from roost.inference.v1 import inference_service_pb2_grpc as pb_grpc
from services.inference.registry import ModelRegistry
from services.inference.servicer import POLICY, SERVICE, InferenceServicer
from services.kit.auth import Role
from services.kit.certs import ensure_certs
from services.kit.config import ServiceConfig
from services.kit.server import Registration, RoostServer
from services.kit.watchdog import LIVENESS, LoopWatchdog, ProbeServer
from tests.support.onnx_models import linear_model
from tests.support.stalls import free_port, probe
from tests.support.waiting import wait_until, wait_until_async

NAME = "roost.inference.v1.InferenceService"
SERVING = "SERVING"
NOT_SERVING = "NOT_SERVING"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_heartbeat_ages_until_the_loop_beats_again() -> None:
    clock = Clock()
    dog = LoopWatchdog(4.0, clock=clock)
    assert dog.interval == 1.0
    clock.now += 4.0
    assert not dog.stalled()  # exactly the limit is still alive
    clock.now += 0.5
    assert dog.stalled()
    assert dog.age() == pytest.approx(4.5)
    assert LoopWatchdog(0.2).interval == pytest.approx(0.05)  # several beats per limit
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="stall_seconds"):
            LoopWatchdog(bad)


def test_probe_port_answers_from_its_own_threads_and_only_check() -> None:
    clock = Clock()
    server = ProbeServer(LoopWatchdog(5.0, clock=clock), "127.0.0.1", 0)
    port = server.start()
    try:
        server.health.set("", serving=True)
        assert probe(port, LIVENESS) == SERVING
        assert probe(port, "") == SERVING
        assert probe(port, "nope") == "NOT_FOUND"
        server.health.shutdown()  # a graceful stop: not ready, still alive
        assert probe(port, "") == NOT_SERVING
        assert probe(port, LIVENESS) == SERVING
        clock.now += 6.0  # no heartbeat for longer than the limit
        assert probe(port, LIVENESS) == NOT_SERVING
        # Watch would hold one of its two threads per stream: probes use Check only.
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stream = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service=""), timeout=2
            )
            with pytest.raises(grpc.RpcError) as e:
                next(iter(stream))
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        server.stop()


def test_probe_port_refuses_a_port_in_use() -> None:
    first = ProbeServer(LoopWatchdog(5.0), "127.0.0.1", 0)
    port = first.start()
    try:
        with pytest.raises(OSError, match=f"cannot bind health port 127.0.0.1:{port}"):
            ProbeServer(LoopWatchdog(5.0), "127.0.0.1", port).start()
    finally:
        first.stop()


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[ModelRegistry]:
    reg = ModelRegistry()
    reg.put(linear_model(tmp_path, [1.0]))
    yield reg
    reg.close()


async def test_a_stuck_event_loop_fails_the_probes_until_it_runs_again(
    tmp_path: Path, registry: ModelRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    """The service's loop is blocked (a blocking call run on it, as a buggy servicer
    would): the health port says NOT_SERVING for liveness and readiness while it lasts,
    though every thread of the process is alive, then SERVING again."""
    certs = tmp_path / "certs"
    ensure_certs(certs)
    server = RoostServer(
        ServiceConfig(certs_dir=certs, health_port=free_port(), loop_stall_seconds=2.0),
        Role.INFERENCE,
        [
            Registration.of(
                SERVICE,
                InferenceServicer(registry, max_batch=8),
                pb_grpc.add_InferenceServiceServicer_to_server,
                POLICY,
            )
        ],
    )
    await server.start()
    port = server.health_port
    try:
        assert probe(port, LIVENESS) == SERVING
        assert probe(port, NAME) == SERVING
        seen: dict[str, str] = {}
        release = threading.Event()

        def probe_while_stuck() -> None:
            try:
                wait_until(
                    lambda: probe(port, LIVENESS) == NOT_SERVING,
                    10,
                    "liveness NOT_SERVING while the loop is stuck",
                )
                seen[LIVENESS] = NOT_SERVING
                seen[NAME] = probe(port, NAME)
            finally:
                release.set()

        prober = threading.Thread(target=probe_while_stuck)
        prober.start()
        with caplog.at_level(logging.WARNING, logger="services.kit.watchdog"):
            release.wait(30)  # blocks the event loop itself: the stuck loop under test
        prober.join()
        assert seen == {LIVENESS: NOT_SERVING, NAME: NOT_SERVING}
        assert "event loop stalled" in caplog.text
        assert "test_watchdog.py" in caplog.text  # where the loop was stuck
        await wait_until_async(
            lambda: probe(port, LIVENESS) == SERVING, 10, "liveness SERVING again"
        )
        assert probe(port, NAME) == SERVING
    finally:
        await server.stop(0)


async def test_the_watchdog_stops_with_the_server(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    ensure_certs(certs)
    server = RoostServer(ServiceConfig(certs_dir=certs), Role.INFERENCE, [])
    await server.start()
    beats = [t for t in asyncio.all_tasks() if t.get_name() == "loop-watchdog"]
    assert len(beats) == 1
    await server.stop(0)
    assert beats[0].done()
