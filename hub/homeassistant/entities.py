"""The entities of the Roost hub device: MQTT discovery components and their configs.

One retained discovery config per entity (``<prefix>/<component>/roost_<hub_id>/<key>/config``),
each with the same device block, so a message's size does not grow with the number of
entities; ``docs/home-assistant.md`` lists the components:

* per (model, area) the hub decided on, added with its first decision: the prediction
  (``binary_sensor``/``sensor``) whose state and attributes are templates over the
  decision topic ``roost/<hub_id>/decisions/<model>/<area>``; a "was wrong" ``button``
  for classification models (the routine model adds a "what was it?" ``select``);
* per model: drift and health ``binary_sensor`` (device_class problem), an ``update``
  entity, "roll back" and "learn now" buttons, and whether the hub is deciding with it
  (an ``enum`` ``sensor``), plus one "decisions" problem ``binary_sensor`` for all models:
  both read the hub's retained health document (``hub.health``), no publisher of their own;
* the privacy budget ``sensor`` (unavailable without the personalization service), the
  learning mode ``select`` and the threshold ``number`` entities.

The functions here only describe components; the bridge adds the ``unique_id``, the
availability and, for entities that take commands, the ``command_topic``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hub.health import ModelState, health_topic
from hub.homeassistant.settings import LEARNING_MODES, NUMBERS
from hub.homeassistant.topics import device_id, personalization_availability, state_topic
from hub.topics import decision_topic, status_topic

ROOST_VERSION = "0.1.0"
# Sent (retained) to the single device config of earlier versions: Home Assistant unloads
# those entities but keeps their registry entries, so the per-entity configs that follow
# take them over (same unique ids, same entity ids). The topic is cleared right after.
MIGRATE_PAYLOAD = b'{"migrate_discovery":true}'
# Binary models: "was wrong" means the other label.
BINARY_OPPOSITE = {"occupancy": {"occupied": "vacant", "vacant": "occupied"}}
# The per-model problem sensors: (key suffix and value field, name).
MODEL_PROBLEMS = (("drift", "drift"), ("health", "model health"))

_ATTRIBUTES_TEMPLATE = (
    "{{ {'confidence': value_json.confidence, 'model_version': value_json.model.version, "
    "'why': value_json.why, 'decision_id': value_json.decision_id, "
    "'audit_index': value_json.audit_index, 'label': value_json.label, "
    "'action': value_json.action, 'decided_at': value_json.decided_at, "
    "'feedback': value_json.get('feedback'), "
    "'corrected_label': value_json.get('corrected_label')} | tojson }}"
)
# The label an entity shows: the owner's correction ("was wrong"), else the decision's.
_SHOWN_LABEL = "(value_json.get('corrected_label') or value_json.label)"

# HA's update JSON allows its own keys only: the state document without ``attributes``.
_UPDATE_KEYS = (
    "installed_version",
    "latest_version",
    "in_progress",
    "update_percentage",
    "title",
    "release_summary",
)
_UPDATE_TEMPLATE = (
    "{{ {" + ", ".join(f"'{k}': value_json.{k}" for k in _UPDATE_KEYS) + "} | tojson }}"
)

# The options of a model's "decisions" sensor: the states of ``hub.health``.
DECISION_STATES = tuple(s.value for s in ModelState)
# Jinja: ``doc`` = the health document, or {} if the payload is no JSON object.
_HEALTH_DOC = (
    "{% set doc = value_json if value_json is defined and value_json is mapping else {} %}"
)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    labels: tuple[str, ...]
    version: str = ""


def title(text: str) -> str:
    return text.replace("_", " ").capitalize()


def _area_name(area: str) -> str:
    return area.replace("_", " ")


def prediction_component(
    hub_id: str, model: str, area: str, labels: Sequence[str]
) -> dict[str, Any]:
    """The entity of one (model, area), its state and attributes from the decision topic."""
    topic = decision_topic(hub_id, model, area)
    base: dict[str, Any] = {
        "name": f"{title(model)} {_area_name(area)}",
        "unique_id": f"{device_id(hub_id)}_{model}_{area}",
        "state_topic": topic,
        "json_attributes_topic": topic,
        "json_attributes_template": _ATTRIBUTES_TEMPLATE,
    }
    if model == "occupancy":
        return {
            **base,
            "p": "binary_sensor",
            "device_class": "occupancy",
            "value_template": "{{ 'ON' if " + _SHOWN_LABEL + " == 'occupied' else 'OFF' }}",
        }
    if model == "anomaly":
        # Regression outputs; values[1] is the anomaly score (0..1).
        return {
            **base,
            "p": "binary_sensor",
            "device_class": "problem",
            "value_template": "{{ 'ON' if value_json['values'][1] >= 0.5 else 'OFF' }}",
        }
    if model == "comfort":
        return {
            **base,
            "p": "sensor",
            "device_class": "temperature",
            "unit_of_measurement": "°C",
            "state_class": "measurement",
            "name": f"Temperature forecast {_area_name(area)}",
            "value_template": "{{ value_json['values'][0] | round(1) }}",
        }
    component = {**base, "p": "sensor", "value_template": "{{ " + _SHOWN_LABEL + " }}"}
    if labels:
        component |= {"device_class": "enum", "options": list(labels)}
    return component


def feedback_kind(model: str, labels: Sequence[str]) -> str | None:
    """ "binary" (the opposite label), "choice" (a select names it) or None (no feedback:
    regression models have no label to correct)."""
    if model in BINARY_OPPOSITE:
        return "binary"
    if model in ("comfort", "anomaly") or not labels:
        return None
    return "choice"


def label_select_component(
    hub_id: str, model: str, area: str, labels: Sequence[str]
) -> dict[str, Any]:
    """ "What was it?": the label a "was wrong" press of a choice model sends."""
    return {
        "p": "select",
        "name": f"{title(model)} {_area_name(area)}: what was it?",
        "options": list(labels),
        "state_topic": state_topic(hub_id, f"{model}_{area}_label"),
    }


def wrong_button_component(model: str, area: str) -> dict[str, Any]:
    return {
        "p": "button",
        "name": f"{title(model)} {_area_name(area)} was wrong",
        "icon": "mdi:thumb-down",
        "payload_press": "PRESS",
    }


def button_component(name: str) -> dict[str, Any]:
    return {"p": "button", "name": name, "payload_press": "PRESS"}


def privacy_budget_component(hub_id: str) -> dict[str, Any]:
    """Available only while both the hub and the personalization service are."""
    return {
        "p": "sensor",
        "name": "Privacy budget spent",
        "icon": "mdi:shield-lock",
        "unit_of_measurement": "ε",
        "state_class": "measurement",
        "state_topic": state_topic(hub_id, "privacy_budget"),
        "value_template": "{{ value_json.epsilon_spent }}",
        "json_attributes_topic": state_topic(hub_id, "privacy_budget"),
        "availability": [
            {"topic": status_topic(hub_id)},
            {"topic": personalization_availability(hub_id)},
        ],
        "availability_mode": "all",
    }


def learning_mode_component(hub_id: str) -> dict[str, Any]:
    return {
        "p": "select",
        "name": "Learning mode",
        "icon": "mdi:school",
        "options": list(LEARNING_MODES),
        "state_topic": state_topic(hub_id, "learning_mode"),
        "entity_category": "config",
    }


def number_component(hub_id: str, key: str) -> dict[str, Any]:
    name, lo, hi, step = NUMBERS[key]
    return {
        "p": "number",
        "name": name,
        "min": lo,
        "max": hi,
        "step": step,
        "mode": "box",
        "state_topic": state_topic(hub_id, key),
        "entity_category": "config",
    }


def model_problem_component(hub_id: str, model: str, what: str, name: str) -> dict[str, Any]:
    """Drift or health of a model, from its status topic (the coordinator polls it)."""
    status = state_topic(hub_id, f"{model}_status")
    return {
        "p": "binary_sensor",
        "name": f"{title(model)} {name}",
        "device_class": "problem",
        "entity_category": "diagnostic",
        "state_topic": status,
        "value_template": f"{{{{ value_json.{what} }}}}",
        "json_attributes_topic": status,
        "json_attributes_template": "{{ value_json.details | tojson }}",
    }


def _model_health(model: str) -> str:
    """Jinja: ``m`` = the model's entry of the health document, or {}. The name goes in as a
    JSON string literal (data, never template code); ``known`` = the state is one of ours."""
    return (
        _HEALTH_DOC
        + "{% set m = (doc.models | default({}))["
        + json.dumps(model)
        + "] | default({}) %}{% set known = m.state in "
        + json.dumps(DECISION_STATES)
        + " %}"
    )


def model_decisions_component(hub_id: str, model: str) -> dict[str, Any]:
    """Whether the hub is deciding with ``model``, and why not (its entry of the retained
    health document). A model the document lacks, or a state HA does not know, is
    ``unknown`` (never the last state kept); the attributes then are empty."""
    entry = _model_health(model)
    return {
        "p": "sensor",
        "name": f"{title(model)} decisions",
        "device_class": "enum",
        "options": list(DECISION_STATES),
        "icon": "mdi:robot",
        "entity_category": "diagnostic",
        "state_topic": health_topic(hub_id),
        "value_template": entry + "{{ m.state if known else None }}",
        "json_attributes_topic": health_topic(hub_id),
        "json_attributes_template": entry
        + "{{ ({'reason': m.detail | default(none), 'queued': m.queued | default(none), "
        "'since': m.since | default(none)} if known else {}) | tojson }}",
    }


def decisions_problem_component(hub_id: str) -> dict[str, Any]:
    """On (a problem) unless the health document says every model is deciding."""
    return {
        "p": "binary_sensor",
        "name": "Decisions",
        "device_class": "problem",
        "state_topic": health_topic(hub_id),
        "value_template": _HEALTH_DOC + "{{ 'OFF' if doc.deciding is sameas true else 'ON' }}",
    }


def model_update_component(hub_id: str, model: str) -> dict[str, Any]:
    """Versions, progress and summary from the state document; source, rollout stage,
    share and the rolled-back version as attributes (``update_entity``)."""
    topic = state_topic(hub_id, f"{model}_update")
    return {
        "p": "update",
        "name": f"{title(model)} model",
        "state_topic": topic,
        "value_template": _UPDATE_TEMPLATE,
        "json_attributes_topic": topic,
        "json_attributes_template": "{{ value_json.attributes | tojson }}",
        "payload_install": "install",
    }


def device_block(hub_id: str) -> dict[str, Any]:
    """The device every entity belongs to (the same in every entity's config)."""
    return {
        "ids": [device_id(hub_id)],
        "name": "Roost hub",
        "mf": "Roost",
        "mdl": "Roost privacy-preserving AI hub",
        "sw": ROOST_VERSION,
    }


def entity_config(hub_id: str, component: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(platform, discovery payload) of one entity: the component without its platform
    (``p``, which names the topic), with the origin and the hub's device block (or the
    component's own, ``dev``: its area's, :mod:`hub.homeassistant.rooms`)."""
    config: dict[str, Any] = {"dev": device_block(hub_id)}  # or the component's own
    config |= {k: v for k, v in component.items() if k != "p"}
    config |= {"o": {"name": "roost", "sw": ROOST_VERSION}, "qos": 1}
    return str(component["p"]), config
