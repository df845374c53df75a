"""Smoke test against a REAL Home Assistant core 2025.4.4 and a real mosquitto.

Proves the paths Roost relies on: MQTT device-based discovery (a device with a sensor with
JSON attributes and a button), MQTT state updates, ``mqtt_statestream`` publishing HA state
changes, the button's command topic, the logbook API, and areas on the test entities.
See ``tests/support/home_assistant.py`` for the harness and the HA quirks.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import aiomqtt
import pytest

from hub import mqtt
from tests.support.home_assistant import HomeAssistant
from tests.support.waiting import wait_until

# The first test also pays for the HA venv install (~2 min cold) and HA's start (~10 s).
pytestmark = [pytest.mark.integration, pytest.mark.home_assistant, pytest.mark.timeout(900)]

DEVICE_ID = "roost_hub_test"
DISCOVERY_TOPIC = f"homeassistant/device/{DEVICE_ID}/config"
SCORE_STATE = "roost/test/score/state"
SCORE_ATTRIBUTES = "roost/test/score/attributes"
RETRAIN_COMMAND = "roost/test/retrain/press"
SENSOR = "sensor.roost_hub_test_occupancy_score"
BUTTON = "button.roost_hub_test_retrain"
DISCOVERY: dict[str, Any] = {
    "dev": {
        "ids": [DEVICE_ID],
        "name": "Roost hub test",
        "mf": "Roost",
        "mdl": "integration test",
        "sw": "0.1.0",
    },
    # Device-based discovery requires the origin.
    "o": {"name": "roost", "sw": "0.1.0"},
    "cmps": {
        "occupancy_score": {
            "p": "sensor",
            "name": "Occupancy score",
            "unique_id": f"{DEVICE_ID}_occupancy_score",
            "state_topic": SCORE_STATE,
            "json_attributes_topic": SCORE_ATTRIBUTES,
            "unit_of_measurement": "%",
            "state_class": "measurement",
        },
        "retrain": {
            "p": "button",
            "name": "Retrain",
            "unique_id": f"{DEVICE_ID}_retrain",
            "command_topic": RETRAIN_COMMAND,
            "payload_press": "PRESS",
        },
    },
    "qos": 1,
}
ATTRIBUTES = {"model": "occupancy-v1", "confidence": 0.92, "area": "kitchen"}


async def publish(port: int, messages: list[tuple[str, bytes]], retain: bool = True) -> None:
    async with mqtt.client("127.0.0.1", port) as client:
        for topic, payload in messages:
            await client.publish(topic, payload, qos=1, retain=retain)


async def first_message(
    client: aiomqtt.Client, topic: str, expected: bytes, timeout: float = 15
) -> bytes:
    """The first payload ``expected`` on ``topic`` (skips older retained values)."""
    seen: list[bytes] = []
    async with asyncio.timeout(timeout):
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            if message.topic.matches(topic):
                seen.append(message.payload)
                if message.payload == expected:
                    return message.payload
    raise AssertionError(f"no {expected!r} on {topic}; saw {seen}")


@pytest.fixture(scope="module")
def device(ha: HomeAssistant) -> Iterator[dict[str, Any]]:
    """The test device, discovered; its retained messages are cleared afterwards."""
    asyncio.run(
        publish(
            ha.broker_port,
            [
                (DISCOVERY_TOPIC, json.dumps(DISCOVERY).encode()),
                (SCORE_ATTRIBUTES, json.dumps(ATTRIBUTES).encode()),
                (SCORE_STATE, b"12"),
            ],
        )
    )
    ha.wait_state(SENSOR, lambda s: s["state"] == "12" and "model" in s["attributes"])
    ha.wait_state(BUTTON)
    yield DISCOVERY
    # Empty retained payloads delete retained messages. The discovery topic first, and wait
    # until HA dropped the entities, or HA warns about the empty JSON attributes payload.
    asyncio.run(publish(ha.broker_port, [(DISCOVERY_TOPIC, b"")]))
    ha.wait_removed(SENSOR)
    asyncio.run(publish(ha.broker_port, [(SCORE_STATE, b""), (SCORE_ATTRIBUTES, b"")]))


def test_device_discovery_creates_entities_and_device(
    ha: HomeAssistant, device: dict[str, Any]
) -> None:
    sensor = ha.state(SENSOR)
    assert sensor is not None
    assert sensor["attributes"] == {
        **ATTRIBUTES,
        "state_class": "measurement",
        "unit_of_measurement": "%",
        "friendly_name": "Roost hub test Occupancy score",
    }
    button = ha.state(BUTTON)
    assert button is not None
    assert button["attributes"]["friendly_name"] == "Roost hub test Retrain"

    devices = [d for d in ha.device_registry() if ["mqtt", DEVICE_ID] in d["identifiers"]]
    assert len(devices) == 1, devices
    dev = devices[0]
    assert (dev["name"], dev["manufacturer"], dev["model"], dev["sw_version"]) == (
        "Roost hub test",
        "Roost",
        "integration test",
        "0.1.0",
    )
    registry = ha.entity_registry()
    for entity_id in (SENSOR, BUTTON):
        assert registry[entity_id]["device_id"] == dev["id"]
        assert registry[entity_id]["platform"] == "mqtt"


def test_mqtt_state_updates_ha_state(ha: HomeAssistant, device: dict[str, Any]) -> None:
    asyncio.run(
        publish(
            ha.broker_port,
            [
                (SCORE_ATTRIBUTES, json.dumps({**ATTRIBUTES, "confidence": 0.5}).encode()),
                (SCORE_STATE, b"57"),
            ],
        )
    )
    state = ha.wait_state(SENSOR, lambda s: s["state"] == "57")
    ha.wait_state(SENSOR, lambda s: s["attributes"]["confidence"] == 0.5)
    assert state["attributes"]["unit_of_measurement"] == "%"


async def test_statestream_publishes_ha_state_changes(ha: HomeAssistant) -> None:
    base = f"{ha.statestream_base}/input_number/living_room_temperature"
    template = f"{ha.statestream_base}/sensor/living_room_temperature"
    async with mqtt.client("127.0.0.1", ha.broker_port) as client:
        await client.subscribe(f"{ha.statestream_base}/#", qos=1)
        await asyncio.to_thread(
            ha.call_service,
            "input_number",
            "set_value",
            {"entity_id": "input_number.living_room_temperature", "value": 23.5},
        )
        await first_message(client, f"{base}/state", b"23.5")
        # The template sensor follows; statestream also publishes attributes (JSON-encoded).
        await first_message(client, f"{template}/state", b"23.5")
    async with mqtt.client("127.0.0.1", ha.broker_port) as client:
        await client.subscribe(f"{template}/device_class", qos=1)
        await first_message(client, f"{template}/device_class", b'"temperature"')


async def test_button_press_publishes_command(ha: HomeAssistant, device: dict[str, Any]) -> None:
    async with mqtt.client("127.0.0.1", ha.broker_port) as client:
        await client.subscribe(RETRAIN_COMMAND, qos=1)
        await asyncio.to_thread(ha.call_service, "button", "press", {"entity_id": BUTTON})
        await first_message(client, RETRAIN_COMMAND, b"PRESS")


def test_logbook_shows_state_change(ha: HomeAssistant) -> None:
    ha.call_service("input_boolean", "turn_on", {"entity_id": "input_boolean.kitchen_light"})
    ha.wait_state("input_boolean.kitchen_light", lambda s: s["state"] == "on")
    entry = wait_until(
        lambda: next(
            (e for e in ha.logbook("input_boolean.kitchen_light") if e.get("state") == "on"), None
        ),
        10,
        "'on' in the logbook",
    )
    assert entry["entity_id"] == "input_boolean.kitchen_light"
    assert entry["name"] == "Kitchen light"


def test_test_entities_have_areas_and_device_classes(ha: HomeAssistant) -> None:
    registry = ha.entity_registry()
    assert registry["input_boolean.kitchen_light"]["area_id"] == "kitchen"
    assert registry["binary_sensor.kitchen_occupancy"]["area_id"] == "kitchen"
    assert registry["sensor.living_room_temperature"]["area_id"] == "living_room"
    states = ha.states()
    assert states["sensor.living_room_temperature"]["attributes"]["device_class"] == "temperature"
    assert states["binary_sensor.kitchen_occupancy"]["attributes"]["device_class"] == "occupancy"
