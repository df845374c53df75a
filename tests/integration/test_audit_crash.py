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
from tests.support.metrics import metric
from tests.support.mqtt_helpers import OCCUPIED, Decisions, all_entries, collect_decisions
from tests.support.stacks import start_stack

pytestmark = pytest.mark.integration

RATE = 150  # readings per second
READINGS = 900  # a 6 s stream
KILL_AFTER = 225  # readings: the audit service is SIGKILLed 1.5 s into the stream
RESTART_AFTER = 450  # readings: and restarted 1.5 s of stream later


@pytest.fixture
def crash_stack(tmp_path: Path) -> Iterator[Stack]:
    st = start_stack(tmp_path)
    yield st
    st.stop()


async def stream(stack: Stack, decisions: Decisions, marks: dict[str, int]) -> int:
    """Publish the readings at RATE, killing and restarting the audit service on the way;
    ``marks`` gets how many decisions had arrived at the kill and at the restart."""
    kinds = list(OCCUPIED)
    port = stack.port_of(Role.AUDIT)
    start = time.monotonic()
    async with mqtt.client("127.0.0.1", stack.broker_port) as client:
        for n in range(READINGS):
            kind = kinds[n % 4]
            payload = json.dumps(
                {"value": OCCUPIED[kind], "ts": 1_423_058_400.0 + n, "id": f"c{n}"}
            )
            await client.publish(reading_topic("crash", kind), payload.encode())
            if n + 1 == KILL_AFTER:
                stack.kill("audit")
                marks["kill"] = len(decisions.items)
            elif n + 1 == RESTART_AFTER:
                # Restart on the same port and data directory (the hub's target).
                await asyncio.to_thread(
                    stack.start_service, Role.AUDIT, {"ROOST_AUDIT_PORT": str(port)}
                )
                marks["restart"] = len(decisions.items)
            # Pacing IS the scenario (a steady sensor stream with an outage inside it), not a
            # wait for something to happen: after the restart the stream catches up at once.
            await asyncio.sleep(max(0.0, (n + 1) / RATE - (time.monotonic() - start)))
    return READINGS


async def test_audit_killed_mid_stream(crash_stack: Stack) -> None:
    stack = crash_stack
    marks: dict[str, int] = {}
    retries_before = metric(stack, "roost_hub_audit_append_retries_total")
    async with collect_decisions(stack) as decisions:
        sent = await stream(stack, decisions, marks)
        # Decisions are published in reading order: the last reading's comes last.
        await decisions.wait_for_trigger(f"c{sent - 1}", timeout=60)
    published = decisions.items

    logged = {e.decision.decision_id: e.index for e in await all_entries(stack)}
    published_ids = [d["decision_id"] for d in published]
    # No unrecorded decision was published, and each carries its true log index.
    missing = [i for i in published_ids if i not in logged]
    assert missing == []
    assert all(logged[d["decision_id"]] == d["audit_index"] for d in published)
    # No acknowledged decision was lost: everything published before the kill is there.
    before_kill = published[: marks["kill"]]
    assert len(before_kill) > 50
    assert all(d["decision_id"] in logged for d in before_kill)
    # The log holds no duplicates from the hub's retries.
    assert len(logged) == len(set(logged))
    # The hub retried through the outage and recovered without a restart.
    after_restart = published[marks["restart"] :]
    assert len(after_restart) > 50
    assert metric(stack, "roost_hub_audit_append_retries_total") > retries_before
    assert stack.procs["hub"].alive()
    # Every reading after the window filled got its decision (nothing dropped in between).
    assert len(published) >= sent - 3 - 5
