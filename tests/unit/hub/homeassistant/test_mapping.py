"""The statestream mapping proposed from Home Assistant's registries, and its coverage."""

from __future__ import annotations

from hub.homeassistant.mapping import coverage, propose
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
