"""The discovery components: predictions per model kind, feedback kinds, entity configs,
and the decision-health entities' templates (rendered as Home Assistant renders them)."""

from __future__ import annotations

import contextlib
import json
from typing import Any
from unittest.mock import ANY

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from hub.health import DecisionHealth, ModelState, Peer
from hub.homeassistant.entities import (
    decisions_problem_component,
    entity_config,
    feedback_kind,
    model_decisions_component,
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


# ------------------------------------------------------------ decision health
# The templates are rendered as Home Assistant renders an MQTT entity's: Jinja2's immutable
# sandbox, ``value_json`` only when the payload is JSON ("None" is HA's "unknown").

SANDBOX = ImmutableSandboxedEnvironment()
STATES = ["deciding", "inference_unavailable", "audit_unavailable", "model_refused"]


def render(template: str, payload: bytes) -> str:
    variables: dict[str, Any] = {"value": payload.decode("utf-8", "replace")}
    with contextlib.suppress(ValueError):
        variables["value_json"] = json.loads(payload)
    return SANDBOX.from_string(template).render(variables)


def health(hub_id: str, model: str) -> tuple[Any, Any]:
    """(state, attributes) of ``model``'s decisions sensor for a health payload."""
    c = model_decisions_component(hub_id, model)

    def read(payload: bytes) -> tuple[str, dict[str, Any]]:
        state = render(c["value_template"], payload)
        return state, json.loads(render(c["json_attributes_template"], payload))

    return c, read


class Clock:
    now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def test_decisions_sensor_reads_each_state_and_its_reason_from_the_health_document() -> None:
    c, read = health("home-1", "ent_occupancy")
    assert (c["p"], c["device_class"], c["options"]) == ("sensor", "enum", STATES)
    assert c["options"] == [s.value for s in ModelState]  # every state hub.health has
    assert c["state_topic"] == c["json_attributes_topic"] == "roost/home-1/health"
    assert c["name"] == "Ent occupancy decisions"
    clock = Clock()
    h = DecisionHealth(["ent_occupancy", "ent_other"], clock=clock)

    def doc() -> bytes:
        return json.dumps(h.document("home-1")).encode()

    assert read(doc()) == ("deciding", {"reason": "deciding", "queued": 0, "since": ANY})
    h.queued("ent_occupancy", 2400)
    h.peer_failed(Peer.AUDIT)
    clock.now += 12
    state, attrs = read(doc())
    assert state == "audit_unavailable"
    assert attrs == {
        "reason": "audit unavailable for 12 s, 2,400 readings queued",
        "queued": 2400,
        "since": "2023-11-14T22:13:20+00:00",
    }
    h.peer_failed(Peer.INFERENCE)
    state, attrs = read(doc())
    assert state == "inference_unavailable"
    assert attrs["reason"].startswith("inference unavailable for 0 s")
    h.peer_ok(Peer.INFERENCE)
    h.peer_ok(Peer.AUDIT)
    h.model_refused("ent_occupancy", "NOT_FOUND")
    assert read(doc())[0] == "model_refused"
    assert read(doc())[1]["reason"].startswith("inference refuses the model (NOT_FOUND)")
    # One model's state, not the other's.
    assert health("home-1", "ent_other")[1](doc())[0] == "deciding"


@pytest.mark.parametrize(
    "payload",
    [
        b'{"deciding": true, "models": {}}',  # the hub does not serve the model (yet)
        b'{"deciding": true, "models": {"ent_occupancy": {"state": "sleeping"}}}',  # newer
        b'{"deciding": true, "models": {"ent_occupancy": "deciding"}}',
        b'{"deciding": true, "models": ["ent_occupancy"]}',
        b'{"deciding": true, "models": null}',
        b'{"deciding": true}',
        b'["deciding"]',
        b"deciding",
        b"",
        b"\xff\xfe",
    ],
)
def test_decisions_sensor_is_unknown_for_anything_else(payload: bytes) -> None:
    """Never an error, and never the last state kept (HA keeps the state it had when a
    template gives a value that is not an option): ``unknown`` and no reason."""
    _, read = health("home-1", "ent_occupancy")
    assert read(payload) == ("None", {})


@pytest.mark.parametrize(
    "model",
    ['x"] }}{{ 7 * 7 }}{% set m = {"state": "deciding"} %}', "x'}}{{ 7*7 }}", "caf\u00e9", "a\\b"],
)
def test_a_model_name_is_data_in_the_templates_never_code(model: str) -> None:
    _, read = health("home-1", model)
    doc = {"deciding": False, "models": {model: {"state": "audit_unavailable", "queued": 3}}}
    state, attrs = read(json.dumps(doc).encode())
    assert state == "audit_unavailable"
    assert attrs["queued"] == 3
    other = {"deciding": True, "models": {"x": {"state": "deciding", "queued": 0}}}
    assert read(json.dumps(other).encode()) == ("None", {})


def test_decisions_problem_is_on_unless_every_model_is_deciding() -> None:
    c = decisions_problem_component("home-1")
    assert (c["p"], c["device_class"], c["name"]) == ("binary_sensor", "problem", "Decisions")
    assert c["state_topic"] == "roost/home-1/health"
    h = DecisionHealth(["ent_p1", "ent_p2"], clock=Clock())

    def problem() -> str:
        return render(c["value_template"], json.dumps(h.document("home-1")).encode())

    assert problem() == "OFF"
    h.model_refused("ent_p2", "NOT_FOUND")
    assert problem() == "ON"
    h.model_ok("ent_p2")
    assert problem() == "OFF"
    for garbage in (b'{"deciding": "yes"}', b'{"models": {}}', b"[]", b"x", b""):
        assert render(c["value_template"], garbage) == "ON"


def test_decision_health_configs_stay_small() -> None:
    long_name = "m" * 32  # the longest model name the store accepts
    for component in (
        model_decisions_component("h" * 64, long_name),
        decisions_problem_component("h" * 64),
    ):
        _, config = entity_config("h" * 64, component)
        assert len(json.dumps(config, separators=(",", ":"))) <= 2048
