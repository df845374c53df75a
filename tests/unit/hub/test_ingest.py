"""Ingest: topics to feature windows; weather feeds every room; statestream mapping."""

from __future__ import annotations

import json

import pytest

from hub.ingest import Ingest, is_household_wide, parse_entity_map
from hub.payloads import DROPPED
from hub.pipeline import Pending
from models.features import FeatureSpec, SensorFeature
from models.routine.spec import INPUT_SHAPE

SPEC = FeatureSpec(
    spec_id="test/v1",
    sensors=(
        SensorFeature("temperature", "temperature", "degC"),
        SensorFeature("outdoor_temperature", "outdoor_temperature", "degC"),
    ),
    time_of_day=False,
)


class Collect:
    def __init__(self) -> None:
        self.items: list[Pending] = []

    def submit(self, item: Pending) -> None:
        self.items.append(item)


def make(entities: tuple[str, ...] = ()) -> tuple[Ingest, Collect]:
    sink = Collect()
    ingest = Ingest(
        specs={"m": SPEC},
        pipeline=sink,
        max_payload_bytes=256,
        statestream_base="ha",
        statestream_entities=parse_entity_map(entities),
    )
    return ingest, sink


def reading(value: float, ts: float = 1_700_000_000.0, rid: str = "") -> bytes:
    return json.dumps({"value": value, "ts": ts, "id": rid}).encode()


def test_weather_reaches_every_room() -> None:
    ingest, sink = make()
    ingest.handle("roost/readings/kitchen/temperature", reading(21.0))
    ingest.handle("roost/readings/bedroom/temperature", reading(18.0))
    assert sink.items == []  # no outdoor value yet
    ingest.handle("roost/readings/garden/outdoor_temperature", reading(4.0, rid="w1"))
    assert sorted(p.area for p in sink.items) == ["bedroom", "kitchen"]
    assert all(p.trigger_id == "w1" for p in sink.items)
    assert {tuple(p.features) for p in sink.items} == {(21.0, 4.0), (18.0, 4.0)}
    # A room seen for the first time starts with the latest weather.
    ingest.handle("roost/readings/study/temperature", reading(20.0))
    assert sink.items[-1].area == "study"
    assert tuple(sink.items[-1].features) == (20.0, 4.0)


def test_statestream_mapping() -> None:
    ingest, sink = make(
        ("sensor.k_t=kitchen/temperature", "weather.out=outside/outdoor_temperature")
    )
    ingest.handle("ha/sensor/k_t/state", b"21.5")
    ingest.handle("ha/weather/out/state", b"3.5")
    assert [tuple(p.features) for p in sink.items] == [(21.5, 3.5)]
    ingest.handle("ha/sensor/unmapped/state", b"1")
    ingest.handle("ha/sensor/k_t/state", b"unavailable")
    assert len(sink.items) == 1


def test_bad_mapping_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="must look like"):
        parse_entity_map(("sensor.x=Kitchen",))


def test_household_wide_kinds() -> None:
    assert is_household_wide("outdoor_humidity")
    assert not is_household_wide("temperature")


def test_home_events_feed_the_routine_window() -> None:
    sink = Collect()
    ingest = Ingest(
        specs={},
        pipeline=sink,
        max_payload_bytes=256,
        statestream_base="ha",
        statestream_entities=parse_entity_map(("binary_sensor.fd=entrance/door",)),
        home_models=("routine",),
    )
    t0 = 1_700_000_000.0
    ingest.handle("roost/readings/kitchen/fridge", reading(1, t0))
    ingest.handle("roost/readings/kitchen/fridge", reading(0, t0 + 30))
    assert sink.items == []  # warming up: the window looks back 60 minutes
    ingest.handle(
        "roost/readings/garage/door", reading(1, t0 + 3700)
    )  # area outside the vocabulary
    assert sink.items == []
    ingest.handle("ha/binary_sensor/fd/state", b"on")  # statestream: arrival time, ready
    assert [p.area for p in sink.items] == ["home"]
    assert sink.items[0].features.shape == INPUT_SHAPE
    before = DROPPED.labels("out_of_order")._value.get()
    ingest.handle("roost/readings/kitchen/cupboard", reading(1, t0 + 10))
    assert DROPPED.labels("out_of_order")._value.get() == before + 1
