"""MQTT and gRPC helpers for integration tests (real broker, real services)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from cli.stack import Stack
from hub import mqtt
from hub.topics import decisions_filter, reading_topic
from roost.audit.v1 import audit_service_pb2 as audit_pb
from roost.audit.v1 import audit_service_pb2_grpc as audit_grpc
from services.kit.auth import Role
from tests.support.stacks import service_channel
from tests.support.waiting import wait_until_async

OCCUPIED = {"temperature": 22.5, "humidity": 27.0, "illuminance": 520.0, "carbon_dioxide": 950.0}
VACANT = {"temperature": 20.2, "humidity": 25.0, "illuminance": 0.0, "carbon_dioxide": 440.0}
# 2015-02-04 14:00 and 03:00 (the data's local time, as epoch "UTC").
DAY_TS = 1_423_058_400.0
NIGHT_TS = 1_423_018_800.0


class Decisions:
    """Collects decision messages published by the hub, in arrival order, each decision
    once: a decision sent again with the same ``decision_id`` (for a Home Assistant entity
    created or subscribed late, or corrected; docs/topics.md) is counted in ``resent``,
    as a consumer that counts decisions dedupes it."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.resent = 0
        self._ids: set[str] = set()

    def add(self, doc: dict[str, Any]) -> None:
        decision_id = doc.get("decision_id")
        if decision_id is not None and decision_id in self._ids:
            self.resent += 1
            return
        if decision_id is not None:
            self._ids.add(decision_id)
        self.items.append(doc)

    async def wait_for(self, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Until at least ``n`` decisions arrived; all of them so far."""
        await wait_until_async(
            lambda: len(self.items) >= n,
            timeout,
            lambda: f"{n} decisions (only {len(self.items)})",
            interval=0.02,
        )
        return self.items

    async def wait_for_trigger(self, trigger_id: str, timeout: float = 15.0) -> dict[str, Any]:
        """Until the decision the reading ``trigger_id`` triggered arrived; that decision.

        The hub publishes decisions in the order of their readings, so every decision of an
        earlier reading has arrived by then too."""
        found: dict[str, Any] = await wait_until_async(
            lambda: next((d for d in self.items if d.get("trigger_id") == trigger_id), None),
            timeout,
            lambda: f"the decision of {trigger_id} (have {len(self.items)} decisions)",
            interval=0.02,
        )
        return found


@asynccontextmanager
async def collect_decisions(stack: Stack) -> AsyncIterator[Decisions]:
    decisions = Decisions()
    async with mqtt.client("127.0.0.1", stack.broker_port) as client:
        await client.subscribe(decisions_filter(stack.hub_id), qos=1)

        async def reader() -> None:
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                decisions.add(json.loads(message.payload))

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


def audit_stub(stack: Stack, role: Role = Role.AUDITOR) -> audit_grpc.AuditServiceAsyncStub:
    channel = service_channel(stack, Role.AUDIT, role)
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
