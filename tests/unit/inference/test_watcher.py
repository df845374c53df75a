"""Registry-backed serving: a hot swap under load fails no request and is one atomic
switch; a version that fails to load leaves the active version serving."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest

from roost.inference.v1 import inference_service_pb2 as pb
from roost.inference.v1 import inference_service_pb2_grpc as pb_grpc
from services.inference.app import InferenceApp
from services.inference.servicer import POLICY, SERVICE
from services.kit.auth import Role
from services.kit.certs import ensure_certs
from services.kit.client import aio_channel
from services.kit.errors import NotFound
from services.kit.server import Registration, RoostServer
from services.modelstore.registry import Registry
from tests.support.model_versions import occupancy_version
from tests.support.rollouts import (
    StartApp,
    batch_request,
    config,
    metric,
    tensor,
    two_linear_versions,
)

#: Upper bound on any one wait, so a broken swap fails the test instead of hanging it.
SAFETY_TIMEOUT_SECONDS = 30.0


def registration(app: InferenceApp) -> Registration:
    return Registration.of(
        SERVICE, app.servicer, pb_grpc.add_InferenceServiceServicer_to_server, POLICY
    )


class Answers:
    """Every answered request as (sent, answered, version) on a logical clock (the order
    of events on this event loop), and a condition to wait on new answers."""

    def __init__(self) -> None:
        self.clock = itertools.count()
        self.log: list[tuple[int, int, str]] = []
        self.failures: list[str] = []
        self._changed = asyncio.Condition()

    async def add(self, sent: int, version: str) -> None:
        async with self._changed:
            self.log.append((sent, next(self.clock), version))
            self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(predicate), SAFETY_TIMEOUT_SECONDS)

    def first_answer(self, version: str, sent_after: int, start: int = 0) -> int | None:
        """When the first request sent after ``sent_after`` was answered by ``version``."""
        return next((t for s, t, v in self.log[start:] if v == version and s > sent_after), None)


async def test_hot_swap_under_load_fails_no_request(tmp_path: Path, start_app: StartApp) -> None:
    ensure_certs(tmp_path / "certs")
    disk = Registry(tmp_path / "registry")
    versions = ["1.0.0", "1.1.0"]
    for v in versions:
        disk.add_version(occupancy_version(tmp_path, v), "shipped")
    disk.activate("occupancy", versions[0])
    cfg = config(tmp_path)
    app = await start_app(cfg)
    server = RoostServer(cfg, Role.INFERENCE, [registration(app)])
    port = await server.start()
    swaps_before = metric("roost_inference_swaps_total", model="occupancy")
    baseline = app.registry.get("occupancy").manifest.baseline
    request = pb.PredictRequest(model_name="occupancy", input=tensor(baseline))
    answers = Answers()
    stop = asyncio.Event()

    async def client() -> None:
        channel = aio_channel(
            f"127.0.0.1:{port}",
            certs_dir=tmp_path / "certs",
            role=Role.HUB,
            server_role=Role.INFERENCE,
        )
        stub = pb_grpc.InferenceServiceStub(channel)
        try:
            while not stop.is_set():
                sent = next(answers.clock)
                try:
                    r = await stub.Predict(request, timeout=5)
                except grpc.aio.AioRpcError as e:
                    answers.failures.append(e.code().name)
                    continue
                assert r.prediction.model.version == r.model.version
                await answers.add(sent, r.model.version)
        finally:
            await channel.close()

    async def flip(target: str) -> tuple[int, int, str]:
        """Activate ``target``: (when the activation began, first answer from it to a
        request sent after the activation returned, target), once a few more requests
        have been answered after that one. The server may already serve ``target`` while
        the activation's thread is still returning, so a flip's interval ends where the
        next activation BEGAN."""
        began = next(answers.clock)
        await asyncio.to_thread(disk.activate, "occupancy", target)
        activated = next(answers.clock)
        start = len(answers.log)  # requests sent after the activation are answered later
        await answers.wait_for(lambda: answers.first_answer(target, activated, start) is not None)
        seen = answers.first_answer(target, activated, start)
        assert seen is not None
        seen_at: int = seen
        await answers.wait_for(
            lambda: sum(1 for s, _, _ in answers.log[start:] if s > seen_at) >= 4
        )
        return began, seen_at, target

    clients = [asyncio.create_task(client()) for _ in range(4)]
    flips: list[tuple[int, int, str]] = []
    try:
        await answers.wait_for(lambda: len(answers.log) >= 8)  # the load is on
        flips.extend([await flip(versions[(i + 1) % 2]) for i in range(20)])
    finally:
        stop.set()
        await asyncio.gather(*clients)
        await server.stop(0)

    assert answers.failures == []
    # Between a flip being visible and the next flip, every request sent (and answered)
    # in that interval got the new version: the swap is one atomic switch.
    for (_, seen, target), (next_began, _, _) in itertools.pairwise(flips):
        between = [v for s, t, v in answers.log if s > seen and t < next_began]
        assert len(between) >= 4
        assert set(between) == {target}
    assert metric("roost_inference_swaps_total", model="occupancy") - swaps_before == 20
    gen = disk.state("occupancy").generation
    assert metric("roost_inference_model_generation", model="occupancy") == gen


async def test_a_version_that_fails_to_load_leaves_the_active_serving(
    tmp_path: Path, start_app: StartApp
) -> None:
    disk = two_linear_versions(tmp_path, "staged")
    # Damage the installed candidate after its verification at install time.
    with (disk.version_dir("linear", "2.0.0") / "linear.onnx").open("ab") as f:
        f.write(b"\x00")
    app = await start_app(config(tmp_path))
    x = np.ones((4, 3), dtype=np.float32)
    failed = metric("roost_inference_model_load_failures_total", model="linear", role="candidate")
    disk.start_rollout("linear", "shadow")
    assert app.watcher is not None
    await app.watcher.refresh(force=True)
    assert (
        metric("roost_inference_model_load_failures_total", model="linear", role="candidate")
        == failed + 1
    )
    response = await app.servicer.PredictBatch(batch_request(x), None)
    assert {p.model.version for p in response.predictions} == {"1.0.0"}
    status = await app.servicer.GetModelStatus(pb.GetModelStatusRequest(model_name="linear"), None)
    assert (status.candidate.model.version, status.candidate.loaded) == ("2.0.0", False)
    assert status.generation == disk.state("linear").generation

    # Activating the broken version directly: the old one keeps serving.
    failed = metric("roost_inference_model_load_failures_total", model="linear", role="active")
    disk.activate("linear", "2.0.0")
    await app.watcher.refresh(force=True)
    assert (
        metric("roost_inference_model_load_failures_total", model="linear", role="active")
        == failed + 1
    )
    response = await app.servicer.PredictBatch(batch_request(x), None)
    assert {p.model.version for p in response.predictions} == {"1.0.0"}
    with pytest.raises(NotFound):
        await app.servicer.PredictBatch(
            pb.PredictBatchRequest(model_name="linear", version="2.0.0", inputs=[tensor(x[0])]),
            None,
        )
