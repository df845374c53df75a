"""The one ``grpc.aio`` server factory of every Roost service.

``RoostServer`` binds an mTLS port (the role's certificate, client certificates
required and verified against the hub CA), sets message limits and keepalive,
serves the standard health service (NOT_SERVING as soon as shutdown begins) and
reflection, and routes every RPC through :class:`KitInterceptor`. ``run_service``
is the ``main()`` of a service process: logging, /metrics, ready file, SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from services.kit.auth import Policy, Role
from services.kit.certs import load_identity
from services.kit.config import ServiceConfig
from services.kit.files import write_atomic
from services.kit.interceptors import KitInterceptor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Registration:
    """One gRPC service to mount: its full name and how to add its servicer."""

    full_name: str
    add: Callable[[aio.Server], None]


def channel_options(config: ServiceConfig) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.keepalive_time_ms", int(config.keepalive_time_seconds * 1000)),
        ("grpc.keepalive_timeout_ms", int(config.keepalive_timeout_seconds * 1000)),
        ("grpc.http2.min_ping_interval_without_data_ms", 5000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


class RoostServer:
    def __init__(
        self,
        config: ServiceConfig,
        role: Role,
        registrations: Sequence[Registration],
        policy: Policy,
    ) -> None:
        self.config = config
        self.role = role
        self._registrations = registrations
        self._health = health.aio.HealthServicer()
        self._server = aio.server(
            interceptors=[KitInterceptor(role.value, policy)],
            options=channel_options(config),
            maximum_concurrent_rpcs=None,
        )
        self.port = 0
        self.health_port = 0
        # Health only, no TLS, no other service: for kubelet probes (config.health_port).
        self._health_server: aio.Server | None = None
        self._stopping = False

    async def start(self) -> int:
        for reg in self._registrations:
            reg.add(self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        names = [r.full_name for r in self._registrations]
        reflection.enable_server_reflection(
            [
                *names,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            self._server,
        )
        ident = load_identity(self.config.certs_dir, self.role)
        creds = grpc.ssl_server_credentials(
            [(ident.key_pem, ident.cert_pem)],
            root_certificates=ident.ca_pem,
            require_client_auth=True,
        )
        address = f"{self.config.host}:{self.config.port}"
        self.port = self._server.add_secure_port(address, creds)
        if self.port == 0:
            raise OSError(f"cannot bind gRPC port {address}")
        await self._server.start()
        if self.config.health_port:
            self._health_server = aio.server()
            health_pb2_grpc.add_HealthServicer_to_server(self._health, self._health_server)
            health_address = f"{self.config.host}:{self.config.health_port}"
            self.health_port = self._health_server.add_insecure_port(health_address)
            if self.health_port == 0:
                raise OSError(f"cannot bind health port {health_address}")
            await self._health_server.start()
        for name in ["", *names]:
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("%s serving on %s:%d (mTLS)", self.role.value, self.config.host, self.port)
        return self.port

    async def stop(self, grace: float | None = None) -> None:
        """Graceful stop: NOT_SERVING first, then drain in-flight RPCs for ``grace``."""
        if self._stopping:
            return
        self._stopping = True
        await self._health.enter_graceful_shutdown()
        if self.config.drain_delay_seconds > 0:
            await asyncio.sleep(self.config.drain_delay_seconds)
        await self._server.stop(self.config.grace_seconds if grace is None else grace)
        if self._health_server is not None:
            await self._health_server.stop(0)
        log.info("%s stopped", self.role.value)

    async def wait(self) -> None:
        await self._server.wait_for_termination()


def configure_process(level: str) -> None:
    """Process-wide settings of every Roost process: logging and GIL hand-off.

    gRPC's completion-queue poller, onnxruntime and SQLite run in threads beside the
    event loop; with CPython's default 5 ms switch interval, a finished RPC can wait
    that long for the GIL. 0.5 ms keeps hand-offs well under a millisecond.
    """
    sys.setswitchinterval(0.0005)
    configure_logging(level)


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def write_ready_file(path: Path, **info: Any) -> None:
    write_atomic(path, json.dumps({"pid": os.getpid(), **info}).encode())


def start_metrics(config: ServiceConfig) -> int:
    """Serve Prometheus /metrics; returns the bound port."""
    httpd, _thread = start_http_server(config.metrics_port, addr=config.metrics_host)
    return int(httpd.server_port)


async def run_service(
    config: ServiceConfig,
    role: Role,
    build: Callable[[], Awaitable[tuple[Sequence[Registration], Policy]]],
    on_stop: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Run one service until SIGTERM/SIGINT, then stop gracefully."""
    metrics_port = start_metrics(config)
    registrations, policy = await build()
    server = RoostServer(config, role, registrations, policy)
    port = await server.start()
    if config.ready_file is not None:
        write_ready_file(config.ready_file, port=port, metrics_port=metrics_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("%s: shutdown requested", role.value)
    await server.stop()
    if on_stop is not None:
        await on_stop()
