"""Rooms: one device per area (suggested_area), predictions that expire, and Roost's own
entities never fed back to Roost. (A real Home Assistant places them:
``tests/integration/test_home_assistant_resume.py``.)"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

import pytest

from hub.homeassistant.bridge import HaBridge
from hub.homeassistant.mapping import propose
from hub.homeassistant.rooms import Rooms, area_name
from hub.ingest import Ingest, SensorRef
from hub.payloads import DROPPED
from hub.pipeline import Recorded
from models.features import OCCUPANCY_V1
from tests.support.mqtt_fakes import LoopbackClient
from tests.support.waiting import wait_until_async

PREFIX = "homeassistant"


def recorded(model: str, area: str) -> Recorded:
    topic = f"roost/home-1/decisions/{model}/{area}"
    return Recorded(model, area, f"d-{area}", "vacant", 7, topic, b"{}", None)


async def announced(bridge: HaBridge, items: list[Recorded]) -> dict[str, dict[str, object]]:
    """The discovery configs ``bridge`` publishes once ``items`` were decided."""
    client = LoopbackClient(bridge.handle)
    stop = asyncio.Event()
    flusher = asyncio.create_task(bridge._flusher(stop))
    await bridge.on_connect(client)  # type: ignore[arg-type]
    try:
        await bridge.on_recorded(items)
        # Each area's last config: its "was wrong" button.
        keys = [f"{r.model}_{r.area}_wrong" for r in items]
        await wait_until_async(
            lambda: all(any(f"/{k}/config" in p.topic for p in client.published) for k in keys),
            5,
            "the areas' configs",
            interval=0,
        )
    finally:
        stop.set()
        flusher.cancel()
    return {p.topic: json.loads(p.payload) for p in client.under(PREFIX) if p.payload}


async def test_each_area_is_a_device_in_its_room(make_bridge: Callable[..., HaBridge]) -> None:
    rooms = Rooms("home-1", expire_after_seconds=90, names={"living_room": "Living Room"})
    docs = await announced(
        make_bridge(rooms=rooms),
        [recorded("occupancy", "kitchen"), recorded("occupancy", "living_room")],
    )
    kitchen = docs["homeassistant/binary_sensor/roost_home-1/occupancy_kitchen/config"]
    living = docs["homeassistant/binary_sensor/roost_home-1/occupancy_living_room/config"]
    button = docs["homeassistant/button/roost_home-1/occupancy_living_room_wrong/config"]
    assert kitchen["dev"] == {
        "ids": ["roost_home-1_area_kitchen"],
        "name": "Roost Kitchen",
        "mf": "Roost",
        "mdl": "Roost room",
        "sw": "0.1.0",
        "sa": "Kitchen",
        "via_device": "roost_home-1",
    }
    assert living["dev"]["sa"] == "Living Room"  # HA's own name of the area
    assert button["dev"] == living["dev"]  # the room's "was wrong" is in the room too
    # The entity ids the hub device gave, kept for new entities.
    assert kitchen["object_id"] == "roost_hub_occupancy_kitchen"
    assert button["object_id"] == "roost_hub_occupancy_living_room_was_wrong"
    # A stale decision is unavailable, never current; the hub's will makes all unavailable.
    assert kitchen["expire_after"] == 90
    assert "expire_after" not in button
    assert kitchen["availability"] == [{"topic": "roost/home-1/status"}]
    assert all(len(json.dumps(d)) < 2048 for d in docs.values())
    # The hub's own entities stay on the hub device.
    budget = docs["homeassistant/sensor/roost_home-1/privacy_budget/config"]
    assert budget["dev"]["ids"] == ["roost_home-1"]
    assert "expire_after" not in budget


async def test_the_home_wide_model_stays_on_the_hub_and_never_expires(
    make_bridge: Callable[..., HaBridge],
) -> None:
    docs = await announced(
        make_bridge(rooms=Rooms("home-1", expire_after_seconds=90)), [recorded("routine", "home")]
    )
    routine = docs["homeassistant/sensor/roost_home-1/routine_home/config"]
    assert routine["dev"]["ids"] == ["roost_home-1"]
    assert "expire_after" not in routine  # a quiet home has no events for hours
    assert "object_id" not in routine


async def test_no_expiry_when_disabled(make_bridge: Callable[..., HaBridge]) -> None:
    docs = await announced(make_bridge(), [recorded("occupancy", "kitchen")])
    kitchen = docs["homeassistant/binary_sensor/roost_home-1/occupancy_kitchen/config"]
    assert "expire_after" not in kitchen
    assert kitchen["dev"]["sa"] == "Kitchen"


def test_area_names_come_from_the_registry_or_the_slug() -> None:
    assert area_name("living_room", {"living_room": "Séjour & Co"}) == "Séjour & Co"
    assert area_name("living_room", {}) == "Living room"  # HA matches ignoring case/spaces
    with pytest.raises(ValueError, match="expire_after"):
        Rooms("h", expire_after_seconds=-1)
    proposal = propose(
        {
            "area": [{"area_id": "living_room", "name": "Living Room"}],
            "entity": [
                {"entity_id": "sensor.t", "area_id": "living_room", "device_class": "temperature"}
            ],
        }
    )
    assert proposal.area_names == {"living_room": "Living Room"}


def test_roosts_own_entities_are_dropped_quietly_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """mqtt_statestream sends Roost's own entities back: counted as own_entity, never
    logged, never unknown_sensor; a mapped entity is used whatever its name."""
    decided = []
    ingest = Ingest(
        specs={"occupancy": OCCUPANCY_V1},
        pipeline=type("Sink", (), {"submit": lambda self, p: decided.append(p)})(),
        max_payload_bytes=256,
        statestream_base="ss",
        statestream_entities={"sensor.roost_lab_temperature": SensorRef("lab", "temperature")},
    )
    own, unknown = DROPPED.labels("own_entity"), DROPPED.labels("unknown_sensor")
    before = own._value.get(), unknown._value.get()
    with caplog.at_level(logging.DEBUG, logger="hub.payloads"):
        for _ in range(100):
            ingest.handle("ss/binary_sensor/roost_hub_occupancy_kitchen/state", b"on")
            ingest.handle("ss/sensor/roost_hub_privacy_budget_spent/state", b"0.4")
        ingest.handle("ss/sensor/roost_lab_temperature/state", b"21.0")
    assert own._value.get() - before[0] == 200
    assert unknown._value.get() == before[1]
    assert caplog.records == []
    ingest.handle("ss/sensor/someone_elses/state", b"1")
    assert unknown._value.get() == before[1] + 1  # others still are unknown sensors


async def test_a_new_rooms_latest_decision_is_sent_again_twice(
    make_bridge: Callable[..., HaBridge],
) -> None:
    """A new entity's first decisions may reach the broker before a loaded Home Assistant
    subscribed: its latest one (not the first) is sent again, twice."""
    bridge = make_bridge(settle_seconds=0.05)
    client = LoopbackClient(bridge.handle)
    stop = asyncio.Event()
    flusher = asyncio.create_task(bridge._flusher(stop))
    await bridge.on_connect(client)  # type: ignore[arg-type]
    topic = "roost/home-1/decisions/occupancy/kitchen"
    first = Recorded("occupancy", "kitchen", "d1", "vacant", 7, topic, b'{"n":1}', None)
    newer = Recorded("occupancy", "kitchen", "d2", "occupied", 8, topic, b'{"n":2}', None)
    try:
        await bridge.on_recorded([first])
        await bridge.on_recorded([newer])  # published by the pipeline, maybe too early
        await wait_until_async(
            lambda: len([p for p in client.published if p.topic == topic]) >= 2,
            5,
            "the decision sent twice",
            interval=0.01,
        )
        await bridge.idle()
    finally:
        stop.set()
        flusher.cancel()
    sent = [p.payload for p in client.published if p.topic == topic]
    assert sent == [b'{"n":2}', b'{"n":2}']
