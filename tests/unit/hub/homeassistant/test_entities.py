"""The discovery components: predictions per model kind, feedback kinds, entity configs."""

from __future__ import annotations

from hub.homeassistant.entities import (
    entity_config,
    feedback_kind,
    prediction_component,
)


def test_prediction_components_by_model() -> None:
    occupancy = prediction_component("home-1", "occupancy", "living_room", ("vacant", "occupied"))
    assert (occupancy["p"], occupancy["device_class"]) == ("binary_sensor", "occupancy")
    assert occupancy["name"] == "Occupancy living room"
    assert occupancy["unique_id"] == "roost_home-1_occupancy_living_room"
    comfort = prediction_component("home-1", "comfort", "kitchen", ())
    assert (comfort["p"], comfort["unit_of_measurement"]) == ("sensor", "°C")
    assert comfort["name"] == "Temperature forecast kitchen"
    anomaly = prediction_component("home-1", "anomaly", "kitchen", ())
    assert anomaly["device_class"] == "problem"
    routine = prediction_component("home-1", "routine", "home", ("away", "idle"))
    assert (routine["device_class"], routine["options"]) == ("enum", ["away", "idle"])
    assert "device_class" not in prediction_component("home-1", "other", "home", ())


def test_feedback_kinds() -> None:
    assert feedback_kind("occupancy", ("vacant", "occupied")) == "binary"
    assert feedback_kind("routine", ("away", "idle")) == "choice"
    assert feedback_kind("comfort", ()) is None
    assert feedback_kind("anomaly", ("a", "b")) is None
    assert feedback_kind("other", ()) is None


def test_entity_config_names_the_device_and_origin() -> None:
    component = prediction_component("home 1", "comfort", "kitchen", ())
    platform, config = entity_config("home 1", component)
    assert platform == "sensor"
    assert "p" not in config
    assert "p" in component  # the component itself is left as it was
    assert config["dev"]["ids"] == ["roost_home_1"]
    assert config["dev"]["name"] == "Roost hub"
    assert config["o"]["name"] == "roost"
    assert config["qos"] == 1
    assert config["unique_id"] == component["unique_id"]
