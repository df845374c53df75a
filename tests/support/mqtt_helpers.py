"""MQTT and gRPC helpers for integration tests (real broker, real services)."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from cli.stack import Stack
from cli.status import metric_value
from hub import mqtt
from hub.topics import decisions_filter, reading_topic
from roost.audit.v1 import audit_service_pb2 as audit_pb
from roost.audit.v1 import audit_service_pb2_grpc as audit_grpc
from services.kit.auth import Role
from services.kit.client import aio_channel

OCCUPIED = {"temperature": 22.5, "humidity": 27.0, "illuminance": 520.0, "carbon_dioxide": 950.0}
VACANT = {"temperature": 20.2, "humidity": 25.0, "illuminance": 0.0, "carbon_dioxide": 440.0}
# 2015-02-04 14:00 and 03:00 (the data's local time, as epoch "UTC").
DAY_TS = 1_423_058_400.0
NIGHT_TS = 1_423_018_800.0


class Decisions:
    """Collects decision messages published by the hub."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.arrived_at: list[float] = []

    async def wait_for(self, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.items) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {len(self.items)} of {n} decisions after {timeout}s")
            await asyncio.sleep(0.02)
        return self.items

    async def wait_quiet(self, quiet: float = 1.5, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        last = len(self.items)
        since = time.monotonic()
        while time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            if len(self.items) != last:
                last, since = len(self.items), time.monotonic()
            elif time.monotonic() - since >= quiet:
                return


@asynccontextmanager
async def collect_decisions(stack: Stack) -> AsyncIterator[Decisions]:
    decisions = Decisions()
    async with mqtt.client("127.0.0.1", stack.broker_port) as client:
        await client.subscribe(decisions_filter(stack.hub_id), qos=1)

        async def reader() -> None:
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                decisions.items.append(json.loads(message.payload))
                decisions.arrived_at.append(time.monotonic())

        task = asyncio.create_task(reader())
        try:
            yield decisions
        finally:
            task.cancel()


async def publish(stack: Stack, messages: Sequence[tuple[str, bytes]]) -> None:
    async with mqtt.client("127.0.0.1", stack.broker_port) as client:
        for topic, payload in messages:
            await client.publish(topic, payload, qos=1)


def readings(
    area: str, values: dict[str, float], ts: float, prefix: str
) -> list[tuple[str, bytes]]:
    return [
        (
            reading_topic(area, kind),
            json.dumps({"value": v, "ts": ts, "id": f"{prefix}-{kind}"}).encode(),
        )
        for kind, v in values.items()
    ]


def hub_metric(stack: Stack, name: str) -> float:
    port = stack.procs["hub"].info["metrics_port"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return metric_value(r.read().decode(), name) or 0.0


def audit_stub(stack: Stack, role: Role = Role.AUDITOR) -> audit_grpc.AuditServiceAsyncStub:
    channel = aio_channel(
        f"127.0.0.1:{stack.port_of(Role.AUDIT)}",
        certs_dir=stack.certs_dir,
        role=role,
        server_role=Role.AUDIT,
    )
    return audit_grpc.AuditServiceStub(channel)  # type: ignore[return-value]


async def all_entries(stack: Stack) -> list[audit_pb.LogEntry]:
    stub = audit_stub(stack)
    entries: list[audit_pb.LogEntry] = []
    token = ""
    while True:
        page = await stub.QueryDecisions(
            audit_pb.QueryDecisionsRequest(page_size=1000, page_token=token), timeout=10
        )
        entries.extend(page.entries)
        token = page.next_page_token
        if not token:
            return entries
