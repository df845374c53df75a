"""The Home Assistant topic names of a hub."""

from __future__ import annotations

from hub.homeassistant.topics import (
    command_filter,
    command_key,
    command_topic,
    decision_key,
    device_id,
    discovery_filter,
    discovery_topic,
    legacy_discovery_topic,
    state_topic,
    sync_topic,
)


def test_topics() -> None:
    assert device_id("home 1/a") == "roost_home_1_a"
    assert (
        discovery_topic("homeassistant", "sensor", "home-1", "comfort_kitchen")
        == "homeassistant/sensor/roost_home-1/comfort_kitchen/config"
    )
    assert discovery_topic("ha", "button", "h", "a b/c") == "ha/button/roost_h/a_b_c/config"
    assert discovery_filter("homeassistant", "home-1") == "homeassistant/+/roost_home-1/+/config"
    assert (
        legacy_discovery_topic("homeassistant", "home-1")
        == "homeassistant/device/roost_home-1/config"
    )
    assert sync_topic("home-1") == "roost/home-1/ha/sync"
    assert command_topic("home-1", "learning_mode") == "roost/home-1/ha/cmd/learning_mode"
    assert command_filter("home-1") == "roost/home-1/ha/cmd/+"
    assert state_topic("home-1", "privacy_budget") == "roost/home-1/ha/state/privacy_budget"


def test_command_and_decision_keys() -> None:
    assert command_key("home-1", "roost/home-1/ha/cmd/occupancy_train") == "occupancy_train"
    assert command_key("home-1", "roost/home-2/ha/cmd/occupancy_train") is None
    assert command_key("home-1", "roost/readings/kitchen/temperature") is None
    assert decision_key("roost/home-1/decisions/occupancy/kitchen") == ("occupancy", "kitchen")
