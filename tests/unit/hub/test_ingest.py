"""Ingest: topics to feature windows; weather feeds every room; statestream mapping."""

from __future__ import annotations

import gc
import json
import logging
import tracemalloc

import numpy as np
import pytest

from hub.config import HubConfig
from hub.ingest import Ingest, InputLimits, SensorRef, is_household_wide, parse_entity_map
from hub.payloads import DROPPED, DropReason
from hub.pipeline import Pending
from models.features import OCCUPANCY_V1, FeatureSpec, SensorFeature
from models.routine.spec import INPUT_SHAPE
from services.kit.config import load_config
from tests.support.fuzz_corpus import load_corpus

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


# --------------------------------------------------------------- hostile input

OTHER = FeatureSpec(
    spec_id="other/v1",
    sensors=(SensorFeature("temperature", "temperature", "degC"),),
    time_of_day=False,
)
T0 = 1_700_000_000.0


def counts() -> dict[str, float]:
    return {r.value: DROPPED.labels(r.value)._value.get() for r in DropReason}


def delta(before: dict[str, float]) -> dict[str, float]:
    return {k: v - before[k] for k, v in counts().items() if v != before[k]}


def occupancy_ingest(limits: InputLimits | None = None) -> tuple[Ingest, Collect]:
    sink = Collect()
    ingest = Ingest(
        specs={"occupancy": OCCUPANCY_V1},
        pipeline=sink,
        max_payload_bytes=1024,
        statestream_base="homeassistant_statestream",
        statestream_entities={},
        home_models=("routine",),
        limits=limits,
    )
    return ingest, sink


def occupied(ingest: Ingest, area: str, ts: float, rid: str = "") -> None:
    for kind, value in (
        ("temperature", 22.5),
        ("humidity", 27.0),
        ("illuminance", 520.0),
        ("carbon_dioxide", 950.0),
    ):
        ingest.handle(f"roost/readings/{area}/{kind}", reading(value, ts, rid))


def test_every_fuzz_corpus_entry_is_dropped_with_its_reason() -> None:
    entries = load_corpus()
    assert len({e.topic for e in entries}) == len(entries)  # retained: one per topic
    ingest, sink = occupancy_ingest()
    wrong = []
    for e in entries:
        before = counts()
        ingest.handle(e.topic, e.payload)  # never raises
        if delta(before) != {e.reason: 1}:
            wrong.append((e.name, e.reason, delta(before)))
    assert wrong == []
    assert sink.items == []
    assert (ingest.areas, ingest.entities) == (0, 0)


def test_values_out_of_range_never_reach_a_window() -> None:
    ingest, sink = occupancy_ingest()
    before = counts()
    occupied(ingest, "office", T0)
    ingest.handle("roost/readings/office/temperature", reading(3e38, T0 + 1))
    ingest.handle("roost/readings/office/temperature", b'{"value": 1e39}')
    assert delta(before) == {"out_of_range": 1, "not_finite": 1}
    assert len(sink.items) == 1
    assert all(np.isfinite(p.features).all() for p in sink.items)


def test_100kb_names_are_rejected_and_never_logged_whole(caplog: pytest.LogCaptureFixture) -> None:
    ingest, sink = occupancy_ingest()
    name = "a" * 100_000
    topics = [
        f"roost/readings/{name}/temperature",
        f"roost/readings/office/{name}",
        f"homeassistant_statestream/sensor/{name}/state",
    ]
    before = counts()
    with caplog.at_level(logging.WARNING):
        for topic in topics * 10:
            ingest.handle(topic, b"21.5")
    assert delta(before) == {"name_too_long": 30}
    assert (ingest.areas, sink.items) == (0, [])
    assert len(caplog.text) < 1000  # one line, the topic cut


def test_names_are_not_kept_whatever_their_number() -> None:
    """The old drop log kept every (topic, reason) it logged: 200 topics of 100 KB held
    20 MB. Nothing per name may stay behind."""
    ingest, _ = occupancy_ingest()
    logging.getLogger("hub").setLevel(logging.CRITICAL)
    try:
        tracemalloc.start()
        gc.collect()
        start = tracemalloc.get_traced_memory()[0]
        for i in range(200):
            ingest.handle(f"roost/readings/{i:03d}{'a' * 100_000}/temperature", b"21.5")
            ingest.handle(f"homeassistant_statestream/sensor/{i:03d}{'b' * 60_000}/state", b"1")
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
        logging.getLogger("hub").setLevel(logging.NOTSET)
    assert kept < 1_000_000, f"{kept} bytes kept for 400 rejected names"


def test_a_flood_of_2000_areas_leaves_the_state_bounded() -> None:
    ingest, sink = occupancy_ingest()  # the defaults: max_areas 128
    occupied(ingest, "office", T0, "before")
    assert [p.area for p in sink.items] == ["office"]
    before = counts()
    for i in range(2000):
        occupied(ingest, f"flood_{i:04d}", T0 + 1)
    decided = {p.area for p in sink.items}
    assert len(decided) == HubConfig.max_areas
    assert decided == {"office"} | {f"flood_{i:04d}" for i in range(HubConfig.max_areas - 1)}
    assert (ingest.areas, ingest.entities) == (HubConfig.max_areas, HubConfig.max_areas)
    assert delta(before) == {"too_many_areas": (2000 - HubConfig.max_areas + 1) * 4}
    # The existing areas keep deciding (a complete window decides on each reading).
    n = len(sink.items)
    occupied(ingest, "office", T0 + 2, "after")
    occupied(ingest, "flood_0000", T0 + 2, "after")
    assert [(p.area, p.trigger_id) for p in sink.items[n:]] == [
        *[("office", "after")] * 4,
        *[("flood_0000", "after")] * 4,
    ]


def test_the_entity_cap_denies_new_windows_only() -> None:
    sink = Collect()
    ingest = Ingest(
        specs={"m": SPEC, "n": OTHER},
        pipeline=sink,
        max_payload_bytes=256,
        statestream_base="ha",
        statestream_entities={},
        limits=InputLimits(max_areas=10, max_entities=3),
    )
    ingest.handle("roost/readings/kitchen/temperature", reading(21.0))  # m + n: 2 entities
    before = counts()
    ingest.handle("roost/readings/bedroom/temperature", reading(18.0))  # m: 3, n: denied
    assert delta(before) == {"too_many_entities": 1}
    assert ingest.entities == 3
    sink.items.clear()
    ingest.handle("roost/readings/garden/outdoor_temperature", reading(4.0))
    ingest.handle("roost/readings/kitchen/temperature", reading(21.5))
    ingest.handle("roost/readings/bedroom/temperature", reading(18.5))
    assert sorted((p.model, p.area) for p in sink.items) == [
        ("m", "bedroom"),
        ("m", "bedroom"),
        ("m", "kitchen"),
        ("m", "kitchen"),
        ("n", "kitchen"),
    ]


def test_weather_from_a_new_area_is_taken_when_areas_are_full() -> None:
    sink = Collect()
    ingest = Ingest(
        specs={"m": SPEC},
        pipeline=sink,
        max_payload_bytes=256,
        statestream_base="ha",
        statestream_entities={},
        limits=InputLimits(max_areas=1),
    )
    ingest.handle("roost/readings/kitchen/temperature", reading(21.0))
    before = counts()
    ingest.handle("roost/readings/bedroom/temperature", reading(18.0))
    ingest.handle("roost/readings/garden/outdoor_temperature", reading(4.0))
    assert delta(before) == {"too_many_areas": 1}
    assert [(p.area, tuple(p.features)) for p in sink.items] == [("kitchen", (21.0, 4.0))]


class Exploding:
    def submit(self, item: Pending) -> None:
        raise RuntimeError("a bug, with a value 4242.4242")


def test_a_bug_behind_ingest_is_counted_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    ingest = Ingest(
        specs={"m": SPEC},
        pipeline=Exploding(),
        max_payload_bytes=256,
        statestream_base="ha",
        statestream_entities={},
    )
    ingest.handle("roost/readings/kitchen/outdoor_temperature", reading(4.0))
    before = counts()
    with caplog.at_level(logging.INFO):
        ingest.handle("roost/readings/kitchen/temperature", reading(21.0))
    assert delta(before) == {"internal_error": 1}
    assert "RuntimeError" in caplog.text
    assert "4242" not in caplog.text


def test_statestream_values_and_names_are_checked() -> None:
    long_entity = "sensor." + "x" * 300
    ingest, _ = make(("sensor.k_h=kitchen/humidity",))
    ingest.set_entity_map(
        {
            "sensor.k_h": SensorRef("kitchen", "humidity"),
            long_entity: SensorRef("kitchen", "temperature"),
            "sensor.bad": SensorRef("Kitchen", "temperature"),
        }
    )
    before = counts()
    ingest.handle("ha/sensor/k_h/state", b"120")
    ingest.handle("ha/sensor/k_h/state", b"1e39")
    ingest.handle(f"ha/sensor/{'x' * 300}/state", b"21")
    ingest.handle("ha/sensor/bad/state", b"21")
    assert delta(before) == {
        "out_of_range": 1,
        "not_finite": 1,
        "name_too_long": 1,
        "unknown_sensor": 1,
    }
    with pytest.raises(ValueError, match="must look like"):
        parse_entity_map((f"{long_entity}=kitchen/temperature",))


def test_limits_from_config_merge_ranges_over_the_defaults() -> None:
    config = load_config(
        HubConfig,
        "hub",
        env={"ROOST_HUB_SENSOR_RANGES": "temperature=-50:100", "ROOST_HUB_MAX_AREAS": "7"},
    )
    limits = InputLimits.from_config(config)
    assert (limits.ranges["temperature"].low, limits.ranges["temperature"].high) == (-50, 100)
    assert limits.ranges["humidity"].high == 100
    assert (limits.max_areas, limits.max_entities) == (7, HubConfig.max_entities)
    assert InputLimits.from_config(HubConfig()) == InputLimits()
    with pytest.raises(ValueError, match="sensor_ranges"):
        InputLimits.from_config(HubConfig(sensor_ranges=("temperature=85:-40",)))
    with pytest.raises(ValueError, match="max_areas"):
        InputLimits.from_config(HubConfig(max_areas=0))
