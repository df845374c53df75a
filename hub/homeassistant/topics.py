"""The MQTT topics of the Roost hub device in Home Assistant.

* ``<prefix>/<component>/roost_<hub_id>/<key>/config``: one discovery config per entity
  (retained), all with the same device block;
* ``<prefix>/device/roost_<hub_id>/config``: the single device-based config of earlier
  versions (every entity in one message); the hub clears it once (migration);
* ``roost/<hub_id>/ha/cmd/<key>``: commands from an entity (a button, a select, ...);
* ``roost/<hub_id>/ha/state/<key>``: an entity's state (retained);
* ``roost/<hub_id>/ha/personalization/availability``: ``online`` while the
  personalization service answers;
* ``roost/<hub_id>/ha/sync``: the hub's own marker, sent to itself after subscribing: once it
  is back, the broker has delivered every retained message the subscriptions match;
* ``homeassistant/status``: Home Assistant's birth message (``online``).

Predictions are not here: their entities read the decision topics of ``hub.topics``.
"""

from __future__ import annotations

import re

HA_STATUS_TOPIC = "homeassistant/status"


_NOT_ID = re.compile(r"[^A-Za-z0-9_-]")


def device_id(hub_id: str) -> str:
    """The device's id, and the node id of its entities' discovery topics."""
    return "roost_" + _NOT_ID.sub("_", hub_id)


def discovery_topic(prefix: str, component: str, hub_id: str, key: str) -> str:
    """The discovery config of one entity (``component``: its platform, e.g. ``sensor``)."""
    return f"{prefix}/{component}/{device_id(hub_id)}/{_NOT_ID.sub('_', key)}/config"


def discovery_filter(prefix: str, hub_id: str) -> str:
    """Every entity discovery config of the hub."""
    return f"{prefix}/+/{device_id(hub_id)}/+/config"


def legacy_discovery_topic(prefix: str, hub_id: str) -> str:
    """The single device-based config of earlier versions (cleared by the migration)."""
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


def ha_filter(hub_id: str) -> str:
    """Every topic under ``roost/<hub_id>/ha`` (states, commands, availability, sync)."""
    return f"{ha_base(hub_id)}/#"


def sync_topic(hub_id: str) -> str:
    return f"{ha_base(hub_id)}/sync"


def personalization_availability(hub_id: str) -> str:
    return f"{ha_base(hub_id)}/personalization/availability"


def decision_key(decision_topic: str) -> tuple[str, str]:
    """``roost/<hub>/decisions/<model>/<area>`` -> (model, area)."""
    parts = decision_topic.split("/")
    return parts[-2], parts[-1]
