"""Kill the audit service (SIGKILL) mid-stream: no acknowledged decision is lost, no
unrecorded decision is published, and the hub recovers by itself."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.stack import Stack
from hub import mqtt
from hub.topics import reading_topic
from services.kit.auth import Role
from tests.support.mqtt_helpers import OCCUPIED, all_entries, collect_decisions, hub_metric
from tests.support.stacks import start_stack

pytestmark = pytest.mark.integration

RATE = 150  # readings per second
SECONDS = 6


@pytest.fixture
def crash_stack(tmp_path: Path) -> Iterator[Stack]:
    st = start_stack(tmp_path)
    yield st
    st.stop()


async def stream(stack: Stack, kill_at: float, restart_at: float, marks: dict[str, float]) -> int:
    kinds = list(OCCUPIED)
    n = 0
    start = time.monotonic()
    async with mqtt.client("127.0.0.1", stack.broker_port) as client:
        while (elapsed := time.monotonic() - start) < SECONDS:
            kind = kinds[n % 4]
            payload = json.dumps(
                {"value": OCCUPIED[kind], "ts": 1_423_058_400.0 + n, "id": f"c{n}"}
            )
            await client.publish(reading_topic("crash", kind), payload.encode())
            n += 1
            if "kill" not in marks and elapsed >= kill_at:
                stack.kill("audit")
                marks["kill"] = time.monotonic()
            if "kill" in marks and "restart" not in marks and elapsed >= restart_at:
                port = marks["audit_port"]
                # Restart on the same port and data directory (the hub's target).
                await asyncio.to_thread(
                    stack.start_service, Role.AUDIT, {"ROOST_AUDIT_PORT": str(int(port))}
                )
                marks["restart"] = time.monotonic()
            await asyncio.sleep(max(0.0, n / RATE - (time.monotonic() - start)))
    return n


async def test_audit_killed_mid_stream(crash_stack: Stack) -> None:
    stack = crash_stack
    marks: dict[str, float] = {"audit_port": float(stack.port_of(Role.AUDIT))}
    retries_before = hub_metric(stack, "roost_hub_audit_append_retries_total")
    async with collect_decisions(stack) as decisions:
        sent = await stream(stack, kill_at=1.5, restart_at=3.0, marks=marks)
        await decisions.wait_quiet(quiet=2.0)
    published = decisions.items
    assert sent >= RATE * SECONDS * 0.8

    logged = {e.decision.decision_id: e.index for e in await all_entries(stack)}
    published_ids = [d["decision_id"] for d in published]
    # No unrecorded decision was published, and each carries its true log index.
    missing = [i for i in published_ids if i not in logged]
    assert missing == []
    assert all(logged[d["decision_id"]] == d["audit_index"] for d in published)
    # No acknowledged decision was lost: everything published before the kill is there.
    before_kill = [
        d for d, t in zip(published, decisions.arrived_at, strict=True) if t < marks["kill"]
    ]
    assert len(before_kill) > 50
    assert all(d["decision_id"] in logged for d in before_kill)
    # The log holds no duplicates from the hub's retries.
    assert len(logged) == len(set(logged))
    # The hub retried through the outage and recovered without a restart.
    after_restart = [t for t in decisions.arrived_at if t > marks["restart"]]
    assert len(after_restart) > 50
    assert hub_metric(stack, "roost_hub_audit_append_retries_total") > retries_before
    assert stack.procs["hub"].alive()
    # Every reading after the window filled got its decision (nothing dropped in between).
    assert len(published) >= sent - 3 - 5
