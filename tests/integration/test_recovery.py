"""Recovery without loss: inference or audit down for longer than gRPC's default reconnect
backoff, and the hub restarted, while readings keep coming.

Every reading published during the outage gets its decision once the service is back
(the hub holds them), decisions resume about a second after the service is ready
(bounded reconnect backoff, wait-for-ready), the hub says it cannot decide while it
cannot (metrics, the retained health JSON, ``roost status``), and readings published
while the hub is down are decided after it comes back (persistent MQTT session), none
twice (reading ids), as are those a killed hub had taken but not decided (its journal).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cli.stack import Stack
from cli.status import check_stack
from hub import mqtt
from hub.topics import reading_topic
from services.kit.auth import Role
from tests.support.metrics import metric
from tests.support.mqtt_helpers import OCCUPIED, Decisions, all_entries, collect_decisions
from tests.support.stacks import start_stack
from tests.support.waiting import poll_async, wait_until_async

pytestmark = pytest.mark.integration

RATE = 20  # readings per second: a few busy rooms
# Longer than gRPC's default reconnect backoff grows to (1 s x 1.6^n: after a 20 s outage
# the next attempt came 5-10 s after the service was back, 11-14 s after 60 s).
OUTAGE_SECONDS = 20.0
# The first decision after a service is ready: about a second (bounded backoff); the
# bound is generous because the machine is shared. Measured figures: the report/bench.
RESUME_BOUND_SECONDS = 5.0
KINDS = list(OCCUPIED)
TS0 = 1_423_058_400.0  # 2015-02-04 14:00


@pytest.fixture
def own_stack(tmp_path: Path) -> Iterator[Stack]:
    st = start_stack(tmp_path)
    yield st
    st.stop()


def reading(area: str, n: int, prefix: str) -> tuple[str, bytes]:
    """The ``n``-th reading of a stream: the four occupancy kinds in turn, one id each."""
    kind = KINDS[n % len(KINDS)]
    body = {"value": OCCUPIED[kind], "ts": TS0 + n, "id": f"{prefix}{n}"}
    return reading_topic(area, kind), json.dumps(body).encode()


async def publish_paced(stack: Stack, area: str, prefix: str, numbers: range, rate: float) -> None:
    """Publish readings ``numbers`` at ``rate`` per second (QoS 1).

    Pacing IS the scenario (a steady sensor stream that goes on during an outage), not a
    wait for something to happen."""
    start = time.monotonic()
    async with mqtt.client("127.0.0.1", stack.broker_port) as client:
        for i, n in enumerate(numbers):
            await client.publish(*reading(area, n, prefix), qos=1)
            await asyncio.sleep(max(0.0, (i + 1) / rate - (time.monotonic() - start)))


def triggers(decisions: Decisions, area: str) -> list[str]:
    return [d["trigger_id"] for d in decisions.items if d["area"] == area]


async def retained_health(stack: Stack) -> dict[str, Any]:
    """The hub's retained health document (docs/topics.md)."""
    async with mqtt.client("127.0.0.1", stack.broker_port) as client:
        await client.subscribe(f"roost/{stack.hub_id}/health", qos=1)
        message = await asyncio.wait_for(anext(aiter(client.messages)), 10)
    assert isinstance(message.payload, bytes)
    assert message.retain
    doc: dict[str, Any] = json.loads(message.payload)
    return doc


def model_state(stack: Stack, state: str) -> float:
    return metric(stack, "roost_hub_model_state", model="occupancy", state=state)


async def outage(stack: Stack, role: Role, area: str, during: Any = None) -> tuple[int, float]:
    """Stream readings before, during and after ``role`` is down for OUTAGE_SECONDS.

    ``during`` (a coroutine function taking the stack) runs while the service is still
    down. Returns how many readings were published and the seconds from the service
    being ready again to the first decision after it."""
    warm = 40
    down = int(OUTAGE_SECONDS * RATE)
    after = 40
    async with collect_decisions(stack) as decisions:
        await publish_paced(stack, area, "w", range(warm), RATE)
        await decisions.wait_for_trigger(f"w{warm - 1}", timeout=30)
        before = len(triggers(decisions, area))
        port = stack.port_of(role)
        stack.kill(role.value)
        await publish_paced(stack, area, "o", range(warm, warm + down), RATE)
        if during is not None:
            await during(stack)
        assert len(triggers(decisions, area)) == before  # nothing decided while down
        env = {f"ROOST_{role.value.upper()}_PORT": str(port)}
        await asyncio.to_thread(stack.start_service, role, env)
        ready = time.monotonic()
        await wait_until_async(
            lambda: len(triggers(decisions, area)) > before,
            60,
            "the first decision after the restart",
            interval=0.01,
        )
        resumed = time.monotonic() - ready
        total = warm + down + after
        await publish_paced(stack, area, "a", range(warm + down, total), RATE)
        await decisions.wait_for_trigger(f"a{total - 1}", timeout=60)
    got = triggers(decisions, area)
    # Every reading after the first window was decided, once, in reading order.
    expected = [
        f"{p}{n}"
        for p, r in (
            ("w", range(warm)),
            ("o", range(warm, warm + down)),
            ("a", range(warm + down, total)),
        )
        for n in r
    ][len(KINDS) - 1 :]
    assert got == expected
    # Every published decision is in the audit log, under its index, once.
    logged = {e.decision.decision_id: e.index for e in await all_entries(stack)}
    mine = [d for d in decisions.items if d["area"] == area]
    assert all(logged.get(d["decision_id"]) == d["audit_index"] for d in mine)
    assert stack.procs["hub"].alive()
    print(f"\n{role.value} outage {OUTAGE_SECONDS:.0f}s: decided again {resumed:.2f}s after ready")
    return total, resumed


async def test_inference_outage_loses_no_reading(own_stack: Stack) -> None:
    stack = own_stack
    _, resumed = await outage(stack, Role.INFERENCE, "inf_outage")
    assert resumed < RESUME_BOUND_SECONDS
    assert metric(stack, "roost_hub_decisions_total", outcome="predict_failed") == 0


async def test_audit_outage_loses_no_reading_and_the_hub_says_why(own_stack: Stack) -> None:
    stack = own_stack

    async def while_down(stack: Stack) -> None:
        # The hub knows, and says, that it cannot decide: metrics, retained JSON, status.
        await wait_until_async(
            lambda: model_state(stack, "audit_unavailable") == 1, 15, "audit_unavailable"
        )
        assert model_state(stack, "deciding") == 0
        assert metric(stack, "roost_hub_model_backlog", model="occupancy") > 0
        doc = await wait_for_health(stack, "audit_unavailable")
        occupancy = doc["models"]["occupancy"]
        assert doc["deciding"] is False
        assert occupancy["queued"] > 0
        assert occupancy["detail"].startswith("audit unavailable for ")
        assert occupancy["detail"].endswith(" readings queued")
        checks = {c.name: c for c in check_stack(stack.describe())}
        assert not checks["hub/occupancy"].ok
        assert checks["hub/occupancy"].detail.startswith("audit unavailable for ")

    _, resumed = await outage(stack, Role.AUDIT, "aud_outage", while_down)
    assert resumed < RESUME_BOUND_SECONDS
    await wait_until_async(lambda: model_state(stack, "deciding") == 1, 15, "deciding again")
    assert (await wait_for_health(stack, "deciding"))["deciding"] is True
    checks = {c.name: c for c in check_stack(stack.describe())}
    assert checks["hub/occupancy"].ok, checks["hub/occupancy"].detail


async def wait_for_health(stack: Stack, state: str) -> dict[str, Any]:
    """The retained health document once it shows ``state`` for the occupancy model."""
    return await poll_async(
        lambda: retained_health(stack),
        lambda doc: bool(doc["models"].get("occupancy", {}).get("state") == state),
        15,
        f"the health document showing {state}",
    )


async def test_readings_published_while_the_hub_is_down_are_decided_once(
    own_stack: Stack,
) -> None:
    stack = own_stack
    area = "hub_restart"
    async with collect_decisions(stack) as decisions:
        await publish_paced(stack, area, "w", range(8), 200)
        await decisions.wait_for_trigger("w7")
        stack.stop_one("hub")  # SIGTERM: a graceful stop (an upgrade, a restart)
        async with mqtt.client("127.0.0.1", stack.broker_port) as client:
            for n in range(8, 308):
                # Sensors at QoS 1, and the simulator's and HA statestream's QoS 0 (the
                # broker queues those too: queue_qos0_messages).
                await client.publish(*reading(area, n, "d"), qos=n % 2)
        await asyncio.to_thread(stack.start_hub)
        await decisions.wait_for_trigger("d307", timeout=30)
        # Redelivered readings (the same ids again) are not decided twice: the broker
        # redelivers unacknowledged readings, and publishers retry QoS 1 messages.
        async with mqtt.client("127.0.0.1", stack.broker_port) as client:
            for n in range(300, 308):
                await client.publish(*reading(area, n, "d"), qos=1)
            await client.publish(*reading(area, 308, "d"), qos=1)
        # Decisions come in reading order: once d308's is here, any duplicate would be too.
        await decisions.wait_for_trigger("d308", timeout=30)
    got = triggers(decisions, area)
    # The restarted hub's windows are refilled from its journal: the first reading after
    # the restart decides like any other.
    assert got == [f"w{n}" for n in range(3, 8)] + [f"d{n}" for n in range(8, 309)]
    assert len(set(got)) == len(got)
    assert metric(stack, "roost_hub_decisions_total", outcome="duplicate") == 8


async def test_a_killed_hub_loses_no_reading_it_had_taken(own_stack: Stack) -> None:
    # kill -9 while the hub holds readings it took from the broker (inference is down, so
    # they wait in its backlog): after the restart every one is decided, none twice.
    stack = own_stack
    area = "hub_kill"
    async with collect_decisions(stack) as decisions:
        await publish_paced(stack, area, "w", range(8), 200)
        await decisions.wait_for_trigger("w7")
        taken = metric(stack, "roost_hub_readings_total")
        port = stack.port_of(Role.INFERENCE)
        stack.kill("inference")
        await publish_paced(stack, area, "k", range(8, 108), 200)
        await wait_until_async(
            lambda: metric(stack, "roost_hub_readings_total") >= taken + 100,
            30,
            "the hub taking the readings from the broker",
        )
        stack.kill("hub")  # SIGKILL: nothing drained, nothing saved on the way out
        env = {"ROOST_INFERENCE_PORT": str(port)}
        await asyncio.to_thread(stack.start_service, Role.INFERENCE, env)
        await asyncio.to_thread(stack.start_hub)
        await decisions.wait_for_trigger("k107", timeout=60)
        # The next reading decides at once: the windows were refilled from the journal.
        await publish_paced(stack, area, "n", range(108, 109), 200)
        await decisions.wait_for_trigger("n108", timeout=30)
    got = triggers(decisions, area)
    expected = [f"w{n}" for n in range(3, 8)] + [f"k{n}" for n in range(8, 108)] + ["n108"]
    assert sorted(got) == sorted(expected)
    assert len(got) == len(set(got))
