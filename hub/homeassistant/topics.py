"""The MQTT topics of the Roost hub device in Home Assistant.

* ``<prefix>/device/roost_<hub_id>/config``: the device-based discovery config (retained);
* ``roost/<hub_id>/ha/cmd/<key>``: commands from an entity (a button, a select, ...);
* ``roost/<hub_id>/ha/state/<key>``: an entity's state (retained);
* ``roost/<hub_id>/ha/personalization/availability``: ``online`` while the
  personalization service answers;
* ``homeassistant/status``: Home Assistant's birth message (``online``).

Predictions are not here: their entities read the decision topics of ``hub.topics``.
"""

from __future__ import annotations

import re

HA_STATUS_TOPIC = "homeassistant/status"


def device_id(hub_id: str) -> str:
    return "roost_" + re.sub(r"[^A-Za-z0-9_-]", "_", hub_id)


def discovery_topic(prefix: str, hub_id: str) -> str:
    return f"{prefix}/device/{device_id(hub_id)}/config"


def ha_base(hub_id: str) -> str:
    return f"roost/{hub_id}/ha"


def command_topic(hub_id: str, key: str) -> str:
    return f"{ha_base(hub_id)}/cmd/{key}"


def command_filter(hub_id: str) -> str:
    return f"{ha_base(hub_id)}/cmd/+"


def command_key(hub_id: str, topic: str) -> str | None:
    """``roost/<hub_id>/ha/cmd/<key>`` -> ``<key>``, or None if it is no command topic."""
    prefix = f"{ha_base(hub_id)}/cmd/"
    return topic[len(prefix) :] if topic.startswith(prefix) else None


def state_topic(hub_id: str, key: str) -> str:
    return f"{ha_base(hub_id)}/state/{key}"


def personalization_availability(hub_id: str) -> str:
    return f"{ha_base(hub_id)}/personalization/availability"


def decision_key(decision_topic: str) -> tuple[str, str]:
    """``roost/<hub>/decisions/<model>/<area>`` -> (model, area)."""
    parts = decision_topic.split("/")
    return parts[-2], parts[-1]
