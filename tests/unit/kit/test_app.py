"""The App: setup's resources, tasks and channels under one exit stack, closed newest
first after the server; a failed start closes what it opened; a POLICY that does not
match the service's methods refuses the start; SIGTERM ends ``serve``."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from roost.inference.v1 import inference_service_pb2 as pb
from roost.inference.v1 import inference_service_pb2_grpc as pb_grpc
from services.inference.registry import ModelRegistry
from services.inference.servicer import POLICY, SERVICE, InferenceServicer
from services.kit.app import App
from services.kit.auth import Policy, PolicyError, Role
from services.kit.certs import ensure_certs
from services.kit.config import ConfigError, ServiceConfig
from services.kit.peers import peer_channel
from services.kit.server import RoostServer

NAME = SERVICE.full_name


class Resource:
    """Records when it is closed (blocking or coroutine ``close()``)."""

    def __init__(self, name: str, closed: list[str], *, coroutine: bool = False) -> None:
        self.name = name
        self._closed = closed
        self._coroutine = coroutine

    def close(self) -> Awaitable[None] | None:
        if not self._coroutine:
            self._closed.append(self.name)
            return None

        async def close() -> None:
            self._closed.append(self.name)

        return close()


@pytest.fixture
def closed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What was closed, in order; the server's stop is recorded as 'server'."""
    order: list[str] = []
    stop = RoostServer.stop

    async def recording_stop(self: RoostServer, grace: float | None = None) -> None:
        order.append("server")
        await stop(self, grace)

    monkeypatch.setattr(RoostServer, "stop", recording_stop)
    return order


def config(tmp_path: Path, **overrides: Any) -> ServiceConfig:
    certs = tmp_path / "certs"
    ensure_certs(certs)
    return ServiceConfig(port=0, certs_dir=certs, **overrides)


def inference_setup(
    closed: list[str], policy: Policy = POLICY, fail: Exception | None = None
) -> Callable[[App], Awaitable[None]]:
    async def setup(app: App) -> None:
        app.closing(Resource("first", closed))
        registry = app.closing(ModelRegistry())
        app.closing(Resource("second", closed, coroutine=True))

        running = asyncio.Event()

        async def forever() -> None:
            running.set()
            try:
                await asyncio.Event().wait()
            finally:
                closed.append("task")

        app.background(forever(), name="forever")
        await running.wait()
        if fail is not None:
            raise fail
        servicer = InferenceServicer(registry, max_batch=8)
        app.register(SERVICE, servicer, pb_grpc.add_InferenceServiceServicer_to_server, policy)

    return setup


async def list_models(app: App, certs: Path) -> pb.ListModelsResponse:
    channel = peer_channel(
        f"127.0.0.1:{app.port}", certs_dir=certs, role=Role.HUB, peer=Role.INFERENCE
    )
    try:
        stub = pb_grpc.InferenceServiceStub(channel)
        return await stub.ListModels(pb.ListModelsRequest(), timeout=5)
    finally:
        await channel.close()


async def test_start_serves_and_close_unwinds_newest_first(
    tmp_path: Path, closed: list[str]
) -> None:
    cfg = config(tmp_path)
    app = App(cfg, Role.INFERENCE, inference_setup(closed))
    port = await app.start()
    assert port == app.port > 0
    assert app.metrics_port > 0
    assert (await list_models(app, cfg.certs_dir)).models == []
    assert closed == []
    await app.close()
    assert closed == ["server", "task", "second", "first"]


async def test_a_failed_setup_closes_what_it_opened(tmp_path: Path, closed: list[str]) -> None:
    app = App(config(tmp_path), Role.INFERENCE, inference_setup(closed, fail=OSError("disk")))
    with pytest.raises(OSError, match="disk"):
        await app.start()
    assert closed == ["task", "second", "first"]


async def test_a_server_that_cannot_bind_closes_everything(
    tmp_path: Path, closed: list[str]
) -> None:
    app = App(config(tmp_path, host="256.0.0.1"), Role.INFERENCE, inference_setup(closed))
    with pytest.raises((OSError, RuntimeError)):
        await app.start()
    assert closed == ["server", "task", "second", "first"]


async def test_a_method_without_a_policy_entry_refuses_the_start(
    tmp_path: Path, closed: list[str]
) -> None:
    policy = {m: roles for m, roles in POLICY.items() if not m.endswith("/GetModelStatus")}
    app = App(config(tmp_path), Role.INFERENCE, inference_setup(closed, policy))
    with pytest.raises(PolicyError, match=f"{NAME}: POLICY has no entry for GetModelStatus"):
        await app.start()
    assert closed == ["task", "second", "first"]


async def test_a_policy_entry_for_a_method_the_service_lacks_refuses_the_start(
    tmp_path: Path, closed: list[str]
) -> None:
    policy = {**POLICY, f"/{NAME}/Predicts": frozenset({Role.HUB})}
    app = App(config(tmp_path), Role.INFERENCE, inference_setup(closed, policy))
    with pytest.raises(PolicyError, match=f"POLICY names /{NAME}/Predicts, which the service"):
        await app.start()
    assert closed == ["task", "second", "first"]


async def test_peer_channels_close_with_the_app(tmp_path: Path) -> None:
    channels: list[grpc.aio.Channel] = []

    async def setup(app: App) -> None:
        channels.append(app.peer(Role.AUDIT, "127.0.0.1:9"))

    app = App(config(tmp_path), Role.UPDATE, setup)
    await app.start()
    await app.close()
    with pytest.raises(grpc.aio.UsageError):
        await channels[0].unary_unary("/x.Y/Z")(b"", timeout=1)


async def test_a_peer_without_an_address_refuses_the_start(tmp_path: Path) -> None:
    async def setup(app: App) -> None:
        app.peer(Role.PERSONALIZATION, "")

    app = App(config(tmp_path), Role.UPDATE, setup)
    with pytest.raises(ConfigError, match="no address configured for the personalization"):
        await app.start()


async def test_serve_writes_the_ready_file_and_stops_on_sigterm(
    tmp_path: Path, closed: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    ready = tmp_path / "run" / "inference.ready.json"
    app = App(config(tmp_path, ready_file=ready), Role.INFERENCE, inference_setup(closed))
    serving = asyncio.create_task(app.serve())
    await app.ready.wait()
    info = json.loads(ready.read_text())
    assert info == {"pid": os.getpid(), "port": app.port, "metrics_port": app.metrics_port}
    url = f"http://127.0.0.1:{app.metrics_port}/metrics"
    body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
    assert b"roost_grpc_server_handled_total" in body
    with caplog.at_level(logging.INFO, logger="services.kit.app"):
        os.kill(os.getpid(), signal.SIGTERM)
        await serving
    assert "inference: shutdown requested" in caplog.text
    assert closed == ["server", "task", "second", "first"]
    # The handlers are gone with the app: nothing is left to catch a later signal.
    loop = asyncio.get_running_loop()
    assert not loop.remove_signal_handler(signal.SIGTERM)


async def test_a_background_task_that_failed_fails_the_close(tmp_path: Path) -> None:
    closed: list[str] = []
    failed = asyncio.Event()

    async def broken() -> None:
        failed.set()
        raise RuntimeError("checkpointer broke")

    async def setup(app: App) -> None:
        app.closing(Resource("store", closed))
        app.background(broken(), name="broken")
        await failed.wait()

    app = App(config(tmp_path), Role.AUDIT, setup)
    await app.start()
    with pytest.raises(RuntimeError, match="checkpointer broke"):
        await app.close()
    assert closed == ["store"]  # the rest still closed
