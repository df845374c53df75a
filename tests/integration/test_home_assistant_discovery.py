"""The hub's Home Assistant side on a real mosquitto with the real services and hub (no HA
core: what the broker holds is checked; ``test_home_assistant.py`` runs HA itself).

The broker starts with the single retained device config an earlier version published; the
hub replaces it with one retained config per entity, each bounded in size, capped in
number (``ha_max_entities``) while every area keeps being decided. The normal path logs no
warning, a flood of unknown commands is counted and logged a few times, and
``roost ha uninstall`` leaves no retained topic of the hub behind.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest

from cli.main import main
from cli.stack import Stack
from hub import mqtt
from hub.homeassistant.topics import (
    command_topic,
    discovery_filter,
    ha_filter,
    legacy_discovery_topic,
    sync_topic,
)
from hub.homeassistant.uninstall import retained_messages
from services.kit.auth import Role
from tests.support.metrics import metric
from tests.support.mqtt_helpers import DAY_TS, OCCUPIED, collect_decisions, readings
from tests.support.stacks import require_mosquitto
from tests.support.waiting import wait_for_async, wait_until

pytestmark = pytest.mark.integration

HUB_ID = "hadisc"
PREFIX = "homeassistant"
LEGACY = legacy_discovery_topic(PREFIX, HUB_ID)
# What an earlier version left retained: every entity in one device config.
LEGACY_CONFIG = json.dumps(
    {
        "dev": {"ids": [f"roost_{HUB_ID}"], "name": "Roost hub"},
        "o": {"name": "roost", "sw": "0.1.0"},
        "cmps": {"learning_mode": {"p": "select", "options": ["learning"]}},
    }
).encode()
MAX_ENTITIES = 100  # the static entities (~29) and some occupancy areas (2 entities each)
MAX_CONFIG_BYTES = 2048
FLOOD = 10_000


async def publish_all(port: int, messages: list[tuple[str, bytes]], retain: bool = False) -> None:
    """All at once (QoS 1), as a busy house would."""
    async with mqtt.client("127.0.0.1", port, max_inflight_messages=1000) as client:
        for start in range(0, len(messages), 500):
            await asyncio.gather(
                *(
                    client.publish(t, p, qos=1, retain=retain)
                    for t, p in messages[start : start + 500]
                )
            )


async def retained(stack: Stack) -> dict[str, bytes]:
    """The hub's retained discovery configs, legacy config and HA states."""
    filters = [discovery_filter(PREFIX, HUB_ID), LEGACY, ha_filter(HUB_ID)]
    async with mqtt.client("127.0.0.1", stack.broker_port) as client:
        return await retained_messages(client, filters, sync_topic(HUB_ID))


def configs(messages: dict[str, bytes]) -> dict[str, bytes]:
    return {t: p for t, p in messages.items() if t.startswith(f"{PREFIX}/")}


def hub_log(stack: Stack, since: int = 0) -> list[str]:
    return (stack.home / "log" / "hub.log").read_text().splitlines()[since:]


def area_readings(areas: range, tag: str) -> list[tuple[str, bytes]]:
    return [m for i in areas for m in readings(f"room_{i}", OCCUPIED, DAY_TS, f"{tag}-{i}")]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Broker (holding the legacy config), audit, inference, then the hub."""
    require_mosquitto()
    stack = Stack(tmp_path_factory.mktemp("ha-discovery"), hub_id=HUB_ID)
    try:
        stack.start_broker()
        asyncio.run(publish_all(stack.broker_port, [(LEGACY, LEGACY_CONFIG)], retain=True))
        stack.start_service(Role.AUDIT)
        stack.start_service(Role.INFERENCE)
        stack.start_hub({"ROOST_HUB_HA_MAX_ENTITIES": str(MAX_ENTITIES)})
    except BaseException:
        stack.stop()
        raise
    yield stack
    stack.stop()


async def announced(stack: Stack) -> dict[str, bytes]:
    """Once the broker holds a config for every entity of the hub (its gauge), and no
    legacy config: what it holds."""
    held: dict[str, bytes] = {}

    async def complete() -> bool:
        nonlocal held
        held = await retained(stack)
        entities = metric(stack, "roost_hub_ha_components")
        return len(configs(held)) == entities and LEGACY not in held

    await wait_for_async(complete, 15, "a retained config per entity, no legacy config")
    return held


async def test_the_legacy_config_gives_way_to_one_config_per_entity(stack: Stack) -> None:
    held = await announced(stack)
    assert metric(stack, "roost_hub_ha_components") > 0
    for topic, payload in configs(held).items():
        assert len(payload) <= MAX_CONFIG_BYTES, topic
        device = json.loads(payload)["dev"]
        # The hub's device, or a room's (connected via the hub): rooms.py.
        assert device["ids"] == [f"roost_{HUB_ID}"] or (
            device["ids"][0].startswith(f"roost_{HUB_ID}_area_")
            and device["via_device"] == f"roost_{HUB_ID}"
        ), topic
    # The entity the legacy config had keeps its place (same unique id, now on its own).
    config = json.loads(held[f"{PREFIX}/select/roost_{HUB_ID}/learning_mode/config"])
    assert config["unique_id"] == f"roost_{HUB_ID}_learning_mode"
    assert any("moved the Roost hub" in line for line in hub_log(stack))


async def test_deciding_many_rooms_at_once_logs_no_warning(stack: Stack) -> None:
    since = len(hub_log(stack))
    rooms = range(30)
    async with collect_decisions(stack) as decisions:
        await publish_all(stack.broker_port, area_readings(rooms, "normal"))
        await decisions.wait_for(len(rooms), timeout=30)
    held = await announced(stack)
    assert all(f"occupancy_room_{i}" in " ".join(configs(held)) for i in rooms)
    assert metric(stack, "roost_hub_ha_entities_refused_total") == 0
    warnings = [line for line in hub_log(stack, since) if " WARNING " in line]
    assert warnings == []


async def test_rooms_past_the_entity_cap_are_still_decided(stack: Stack) -> None:
    rooms = range(100, 160)
    async with collect_decisions(stack) as decisions:
        await publish_all(stack.broker_port, area_readings(rooms, "capped"))
        got = await decisions.wait_for(len(rooms), timeout=30)
    assert {d["area"] for d in got} == {f"room_{i}" for i in rooms}
    refused = metric(stack, "roost_hub_ha_entities_refused_total")
    assert refused > 0
    held = await announced(stack)
    assert len(configs(held)) <= MAX_ENTITIES
    assert max(len(p) for p in configs(held).values()) <= MAX_CONFIG_BYTES
    cap_lines = [line for line in hub_log(stack) if "ha_max_entities" in line]
    assert len(cap_lines) == 1, cap_lines


async def test_a_flood_of_unknown_commands_is_counted_and_logged_a_few_times(
    stack: Stack,
) -> None:
    since = len(hub_log(stack))
    before = metric(stack, "roost_hub_ha_commands_total", kind="unknown", outcome="unknown")
    flood = [(command_topic(HUB_ID, f"no_such_entity_{i}"), b"PRESS") for i in range(FLOOD)]
    await publish_all(stack.broker_port, flood)
    await asyncio.to_thread(
        wait_until,
        lambda: (
            metric(stack, "roost_hub_ha_commands_total", kind="unknown", outcome="unknown") - before
            == FLOOD
        ),
        30,
        f"{FLOOD} unknown commands counted",
    )
    lines = [line for line in hub_log(stack, since) if "unknown" in line]
    assert 1 <= len(lines) <= 3, lines
    assert stack.procs["hub"].alive()


def test_uninstall_leaves_no_retained_topic_behind(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert configs(asyncio.run(retained(stack)))
    stack.stop_one("hub")  # or it announces itself again
    monkeypatch.setenv("ROOST_HUB_HUB_ID", HUB_ID)
    assert main(["ha", "uninstall", "--mqtt-port", str(stack.broker_port), "--wait", "0"]) == 0
    assert asyncio.run(retained(stack)) == {}
