"""The one ``grpc.aio`` server factory of every Roost service.

``RoostServer`` binds an mTLS port (the role's certificate, client certificates
required and verified against the hub CA), sets message limits and keepalive,
serves the standard health service (NOT_SERVING as soon as shutdown begins) and
reflection, and routes every RPC through :class:`KitInterceptor`, whose policy is
the union of the registrations' policies, each checked against its service's
descriptor. With ``health_port`` set it also opens the probes' plaintext health-only
port (:class:`~services.kit.watchdog.ProbeServer`): the same statuses, answered on its
own threads, plus ``liveness`` from the event-loop watchdog. The process around it
(start, SIGTERM, close) is :class:`services.kit.app.App`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.kit.auth import Policy, PolicyError, Role, service_policy
from services.kit.certs import load_identity
from services.kit.config import ServiceConfig
from services.kit.interceptors import KitInterceptor
from services.kit.watchdog import LoopWatchdog, ProbeServer

log = logging.getLogger(__name__)

S = TypeVar("S")


@dataclass(frozen=True)
class Registration:
    """One gRPC service to mount: its descriptor (``<pb2>.DESCRIPTOR.services_by_name``),
    how to add its servicer, and its POLICY. The policy is checked against the
    descriptor's methods when the registration is made (:func:`service_policy`)."""

    service: ServiceDescriptor
    add: Callable[[aio.Server], None]
    policy: Policy

    def __post_init__(self) -> None:
        object.__setattr__(self, "policy", service_policy(self.service, self.policy))

    @classmethod
    def of(
        cls,
        service: ServiceDescriptor,
        servicer: S,
        add_to_server: Callable[[S, aio.Server], None],
        policy: Policy,
    ) -> Registration:
        """``servicer`` mounted with its generated ``add_<Service>Servicer_to_server``."""
        return cls(service, functools.partial(add_to_server, servicer), policy)

    @property
    def full_name(self) -> str:
        return self.service.full_name


def server_policy(registrations: Sequence[Registration]) -> Policy:
    """The policy of a server: the union of its registrations' (checked) policies."""
    policy: dict[str, frozenset[Role]] = {}
    names: set[str] = set()
    for reg in registrations:
        if reg.full_name in names:
            raise PolicyError(f"{reg.full_name}: registered twice")
        names.add(reg.full_name)
        policy.update(reg.policy)
    return policy


def channel_options(config: ServiceConfig) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.keepalive_time_ms", int(config.keepalive_time_seconds * 1000)),
        ("grpc.keepalive_timeout_ms", int(config.keepalive_timeout_seconds * 1000)),
        ("grpc.http2.min_ping_interval_without_data_ms", 5000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


def server_credentials(certs_dir: Path, role: Role) -> grpc.ServerCredentials:
    """mTLS as every Roost server has it: ``role``'s key and certificate, clients must
    present a certificate from the stack's CA."""
    ident = load_identity(certs_dir, role)
    return grpc.ssl_server_credentials(
        [(ident.key_pem, ident.cert_pem)],
        root_certificates=ident.ca_pem,
        require_client_auth=True,
    )


class RoostServer:
    def __init__(
        self,
        config: ServiceConfig,
        role: Role,
        registrations: Sequence[Registration],
    ) -> None:
        self.config = config
        self.role = role
        self._registrations = registrations
        self._health = health.aio.HealthServicer()
        self._server = aio.server(
            interceptors=[KitInterceptor(role.value, server_policy(registrations))],
            options=channel_options(config),
            maximum_concurrent_rpcs=None,
        )
        self.port = 0
        self.health_port = 0
        self.watchdog = LoopWatchdog(config.loop_stall_seconds)
        # Health only, no TLS, no other service: for kubelet probes (config.health_port).
        self._probe: ProbeServer | None = None
        self._started = False
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
        creds = server_credentials(self.config.certs_dir, self.role)
        address = f"{self.config.host}:{self.config.port}"
        self.port = self._server.add_secure_port(address, creds)
        if self.port == 0:
            raise OSError(f"cannot bind gRPC port {address}")
        await self._server.start()
        self._started = True
        self.watchdog.start()
        if self.config.health_port:
            probe = ProbeServer(self.watchdog, self.config.host, self.config.health_port)
            self.health_port = probe.start()
            self._probe = probe
        for name in ["", *names]:
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
            if self._probe is not None:
                self._probe.health.set(name, serving=True)
        log.info("%s serving on %s:%d (mTLS)", self.role.value, self.config.host, self.port)
        return self.port

    async def stop(self, grace: float | None = None) -> None:
        """Graceful stop: NOT_SERVING first, then drain in-flight RPCs for ``grace``.
        Safe to call more than once, and on a server whose start failed."""
        if self._stopping:
            return
        self._stopping = True
        if self._probe is not None:
            self._probe.health.shutdown()
        await self._health.enter_graceful_shutdown()
        if self._started and self.config.drain_delay_seconds > 0:
            await asyncio.sleep(self.config.drain_delay_seconds)
        await self._server.stop(self.config.grace_seconds if grace is None else grace)
        if self._probe is not None:
            self._probe.stop()
        await self.watchdog.stop()
        log.info("%s stopped", self.role.value)
