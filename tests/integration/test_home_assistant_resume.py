"""Resume at once, stale decisions, rooms: a REAL Home Assistant (2025.4.4) and Roost.

Issue 17's homeowner story: after a Roost restart (the hub and its broker, which forgets the
retained statestream states), ``mqtt_statestream`` sends nothing until an input changes, so
predictions stopped while HA kept showing the pre-restart decision as current. Here, with a
real HA, a real mosquitto and real Roost processes:

* after the restart, with no input changing, a new decision reaches HA within 10 s (the hub
  read the current states from HA's REST API);
* a decision older than ``expire_after`` is shown unavailable, never current, while the
  hub is online; the next decision makes it available again;
* the rooms' entities are on one device per area, placed in HA's Kitchen and Living Room;
  Roost's own entities coming back through statestream are dropped quietly (counted).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from cli.stack import Stack
from hub import mqtt
from tests.support.ha_entities import KINDS, OCCUPIED, VACANT, room_sensors, set_room
from tests.support.ha_roost import start_roost
from tests.support.home_assistant import HomeAssistant
from tests.support.metrics import metric
from tests.support.waiting import WaitTimeout, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.home_assistant, pytest.mark.timeout(600)]

HUB_ID = "haresume"
ROOMS = {"kitchen": "Kitchen", "living_room": "Living Room"}
KITCHEN = "binary_sensor.roost_hub_occupancy_kitchen"
LIVING = "binary_sensor.roost_hub_occupancy_living_room"
# Short, so the stale test is; the default is 1800 s.
EXPIRE_SECONDS = 15
RESUME_LIMIT_SECONDS = 10
# Toggled to see HA publish on a (new) broker; in no area, so Roost never maps it.
PROBE = "input_boolean.resume_probe"


def _ha_options() -> dict[str, Any]:
    numbers, sensors, areas = room_sensors(ROOMS, KINDS, "roostresume")
    return {
        "extra_config": {
            "input_number": numbers,
            "input_boolean": {"resume_probe": {"name": "Resume probe"}},
            "template": [{"sensor": sensors}],
        },
        "areas": areas,
    }


HA_OPTIONS = _ha_options()


@pytest.fixture(scope="module")
def roost(ha: HomeAssistant, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = start_roost(
        ha,
        tmp_path_factory.mktemp("roost") / "stack",
        hub_id=HUB_ID,
        actions="suggest occupancy.kitchen:vacant=input_boolean.turn_off:input_boolean.x",
        hub_env={"ROOST_HUB_HA_DECISION_EXPIRE_SECONDS": str(EXPIRE_SECONDS)},
    )
    try:
        yield stack
    finally:
        stack.stop()


def decision_id(ha: HomeAssistant, entity_id: str) -> str | None:
    state = ha.state(entity_id)
    return None if state is None else state["attributes"].get("decision_id")


async def ha_publishes(ha: HomeAssistant, timeout: float = 60) -> None:
    """Until HA is connected to the broker on ``ha.broker_port``: a toggle of the probe
    comes out of its statestream there (HA reconnects on its own schedule)."""
    topic = f"{ha.statestream_base}/input_boolean/resume_probe/state"
    deadline = time.monotonic() + timeout
    async with mqtt.client("127.0.0.1", ha.broker_port) as client:
        await client.subscribe(topic, qos=1)
        while time.monotonic() < deadline:
            await asyncio.to_thread(
                ha.call_service, "input_boolean", "toggle", {"entity_id": PROBE}
            )
            try:
                async with asyncio.timeout(1.0):
                    await anext(aiter(client.messages))
                return
            except TimeoutError:
                continue
    raise AssertionError("Home Assistant did not publish to the new broker")


def decided(ha: HomeAssistant, room: str, values: dict[str, float], entity: str) -> str:
    """Set ``room`` and return the decision id HA shows. A new entity's first decisions can
    come before HA subscribed to them (the hub sends the latest again a second after the
    config; on a loaded machine HA may take longer): then the temperature is nudged."""
    for attempt in range(5):
        nudged = {**values, "temperature": values["temperature"] + attempt / 10}
        set_room(ha, room, nudged if attempt else values)
        try:
            state = ha.wait_state(entity, lambda s: "decision_id" in s["attributes"], 10)
        except WaitTimeout:
            continue
        return str(state["attributes"]["decision_id"])
    raise AssertionError(f"no decision of {entity} in Home Assistant")


async def test_a_roost_restart_decides_again_within_10_s_with_no_input_changing(
    ha_env: tuple[Stack, HomeAssistant], roost: Stack
) -> None:
    broker, ha = ha_env
    before = {
        KITCHEN: await asyncio.to_thread(decided, ha, "kitchen", VACANT, KITCHEN),
        LIVING: await asyncio.to_thread(decided, ha, "living_room", OCCUPIED, LIVING),
    }
    # Roost restarts: the hub and its broker (which forgets the retained statestream).
    port = broker.broker_port
    roost.stop_one("hub")
    broker.stop_one("mosquitto")
    # A broker that forgot the retained statestream (its store gone, or one without
    # persistence, like a new `roost run` broker): only HA's API has the states now.
    (broker.home / "run" / "mosquitto.db").unlink()
    broker.start_broker(port)
    await ha_publishes(ha)
    started = time.monotonic()
    roost.respawn("hub")
    # No input changes from here on.
    for entity in (KITCHEN, LIVING):
        await asyncio.to_thread(
            ha.wait_state,
            entity,
            lambda s, e=entity: (
                s["attributes"].get("decision_id") not in (None, before[e])
                and s["state"] in ("on", "off")
            ),
            RESUME_LIMIT_SECONDS + 20,  # measured below, this only bounds the wait
        )
    elapsed = time.monotonic() - started
    assert elapsed < RESUME_LIMIT_SECONDS, f"decisions resumed after {elapsed:.1f} s"
    print(f"decisions in Home Assistant {elapsed:.2f} s after the hub was started again")
    await asyncio.to_thread(wait_until, lambda: roost.poll_ready("hub"), 30, "the hub ready")
    assert ha.state(KITCHEN)["state"] == "off"  # type: ignore[index]
    assert ha.state(LIVING)["state"] == "on"  # type: ignore[index]
    assert metric(roost, "roost_hub_ha_resumes_total", outcome="ok") == 1
    assert metric(roost, "roost_hub_ha_resume_states_total", outcome="fed") >= 8
    assert metric(roost, "roost_hub_ha_resumes_total", outcome="failed") == 0


async def test_a_stale_decision_is_shown_unavailable_never_current(
    ha: HomeAssistant, roost: Stack
) -> None:
    """The hub is online and deciding, but the kitchen has no new decision: after
    ``expire_after`` HA shows it unavailable; the next decision brings it back."""
    previous = decision_id(ha, KITCHEN)
    await asyncio.to_thread(set_room, ha, "kitchen", {"temperature": VACANT["temperature"] + 0.6})
    last = await asyncio.to_thread(
        ha.wait_state,
        KITCHEN,
        lambda s: s["state"] == "off" and s["attributes"].get("decision_id") != previous,
        30,
    )
    last_id = last["attributes"]["decision_id"]
    since = time.monotonic()
    await asyncio.to_thread(
        ha.wait_state, KITCHEN, lambda s: s["state"] == "unavailable", EXPIRE_SECONDS + 20
    )
    # Not before its time (HA counts from when it received the decision, a bit earlier).
    assert time.monotonic() - since >= EXPIRE_SECONDS - 5
    # The hub was online all along: its own entities are available.
    decisions = ha.state("binary_sensor.roost_hub_decisions")
    assert decisions is not None
    assert decisions["state"] != "unavailable"
    # A new decision (an input changed): current again.
    await asyncio.to_thread(set_room, ha, "kitchen", {"temperature": VACANT["temperature"] + 0.8})
    again = await asyncio.to_thread(
        ha.wait_state,
        KITCHEN,
        lambda s: s["state"] == "off" and s["attributes"].get("decision_id") != last_id,
        30,
    )
    assert again["attributes"]["decision_id"] != last_id


async def test_each_room_is_a_device_in_its_area_and_roost_ignores_its_own_entities(
    ha: HomeAssistant, roost: Stack
) -> None:
    areas = {a["name"]: a["area_id"] for a in await asyncio.to_thread(ha.area_registry)}
    devices = {d["id"]: d for d in await asyncio.to_thread(ha.device_registry)}
    entities = await asyncio.to_thread(ha.entity_registry)

    def device_of(entity_id: str) -> dict[str, Any]:
        return devices[entities[entity_id]["device_id"]]

    hub = next(d for d in devices.values() if ["mqtt", f"roost_{HUB_ID}"] in d["identifiers"])
    for entity_id, room in ((KITCHEN, "Kitchen"), (LIVING, "Living Room")):
        device = device_of(entity_id)
        assert device["area_id"] == areas[room], (entity_id, device)
        assert device["name"] == f"Roost {room}"
        assert device["via_device_id"] == hub["id"]
        assert entities[entity_id]["area_id"] in (None, areas[room])  # from its device
    wrong = "button.roost_hub_occupancy_kitchen_was_wrong"
    assert device_of(wrong)["area_id"] == areas["Kitchen"]
    # The hub's own entities stay on the hub device, in no room.
    assert device_of("binary_sensor.roost_hub_decisions")["id"] == hub["id"]
    assert hub["area_id"] is None
    # Statestream sent Roost's own entities back (this HA includes every binary_sensor):
    # counted, never logged as unknown sensors.
    assert metric(roost, "roost_hub_readings_dropped_total", reason="own_entity") >= 1
    log = roost.procs["hub"].log_path.read_text()
    assert not [line for line in log.splitlines() if "unknown_sensor" in line and "roost_" in line]
