"""Auto mapping from HA registries, history import resampling."""

from __future__ import annotations

from hub.ha_client import build_examples, parse_label_map
from hub.ha_mapping import coverage, propose
from hub.ingest import SensorRef
from models.features import OCCUPANCY_V1

REGISTRIES = {
    "area": [
        {"area_id": "kitchen", "name": "Kitchen"},
        {"area_id": "living_room", "name": "Living Room"},
        {"area_id": "garden", "name": "Garden"},
    ],
    "device": [{"id": "dev1", "area_id": "living_room"}],
    "entity": [
        {"entity_id": "sensor.k_temp", "area_id": "kitchen", "platform": "template"},
        {
            "entity_id": "sensor.k_co2",
            "area_id": "kitchen",
            "original_device_class": "carbon_dioxide",
        },
        {"entity_id": "sensor.lr_hum", "device_id": "dev1", "device_class": "humidity"},
        {"entity_id": "sensor.garden_t", "area_id": "garden", "device_class": "temperature"},
        {"entity_id": "binary_sensor.front_door", "area_id": "kitchen", "device_class": "door"},
        {"entity_id": "sensor.no_area", "device_class": "temperature"},
        {"entity_id": "sensor.power", "area_id": "kitchen", "device_class": "power"},
        {
            "entity_id": "sensor.off",
            "area_id": "kitchen",
            "device_class": "humidity",
            "disabled_by": "user",
        },
        {"entity_id": "input_number.x", "area_id": "kitchen"},
        {
            "entity_id": "binary_sensor.roost_hub_occupancy_kitchen",
            "area_id": "kitchen",
            "platform": "mqtt",
            "unique_id": "roost_local_occupancy_kitchen",
            "original_device_class": "occupancy",
        },
    ],
    "states": [{"entity_id": "sensor.k_temp", "attributes": {"device_class": "temperature"}}],
}


def test_propose_maps_by_area_and_device_class() -> None:
    p = propose(REGISTRIES)
    assert p.mapping == {
        "sensor.k_temp": SensorRef("kitchen", "temperature"),
        "sensor.k_co2": SensorRef("kitchen", "carbon_dioxide"),
        "sensor.lr_hum": SensorRef("living_room", "humidity"),  # area through its device
        "sensor.garden_t": SensorRef("garden", "outdoor_temperature"),
        "binary_sensor.front_door": SensorRef("kitchen", "door"),
    }
    assert "no area" in p.skipped["sensor.no_area"]
    assert "power" in p.skipped["sensor.power"]
    assert p.skipped["sensor.off"] == "disabled"
    assert "binary_sensor.roost_hub_occupancy_kitchen" not in p.skipped  # Roost's own: ignored
    assert "sensor.k_temp=kitchen/temperature" in p.entries()


def test_coverage_lists_unmapped_inputs() -> None:
    rows = coverage({"occupancy": OCCUPANCY_V1}, propose(REGISTRIES).mapping)
    kitchen = {r.kind: r.entities for r in rows if r.area == "kitchen"}
    assert kitchen == {
        "temperature": ("sensor.k_temp",),
        "carbon_dioxide": ("sensor.k_co2",),
        "humidity": (),
        "illuminance": (),
    }


def test_build_examples_resamples_history_onto_feature_windows() -> None:
    t0 = 1_700_000_000.0
    series = {
        "temperature": [(t0, "21.5"), (t0 + 600, "22.0")],
        "humidity": [(t0, "30"), (t0 + 300, "unavailable")],
        "illuminance": [(t0, "400")],
        "carbon_dioxide": [(t0 + 60, "800")],
    }
    labels = [(t0, "on"), (t0 + 1200, "off"), (t0 + 1500, "weird")]
    examples = build_examples(
        OCCUPANCY_V1, series, labels, parse_label_map("on=occupied,off=vacant"), t0, t0 + 1800
    )
    # Ready from t0+60 (co2 first seen), every 60 s; "weird" maps to nothing; forward fill
    # keeps the window fresh although the sensors reported rarely.
    assert len(examples) == 24  # t0+60 .. t0+1440
    assert examples[0].label == "occupied"
    assert examples[-1].label == "vacant"
    assert list(examples[0].input.shape) == [6]
    assert examples[0].input.float_values[:4] == [21.5, 30.0, 400.0, 800.0]
    assert examples[-1].input.float_values[0] == 22.0
