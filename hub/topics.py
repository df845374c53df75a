"""The MQTT topic schema of a Roost hub (documented in docs/topics.md).

Readings in
  ``roost/readings/<area>/<sensor_kind>``
      payload: JSON ``{"value": 21.5, "ts": 1424870400.0, "id": "r-17"}``; ``ts``
      (epoch seconds, reading time) and ``id`` (echoed in the decision as
      ``trigger_id``) are optional; a bare JSON number is accepted too.
  ``<statestream_base>/<domain>/<object_id>/state``
      Home Assistant ``mqtt_statestream``: the raw state string. The entity is
      mapped to (area, sensor_kind) by configuration; other statestream attribute
      topics are ignored.

Out (``<hub_id>`` from configuration)
  ``roost/<hub_id>/decisions/<model>/<area>``   one JSON decision per message (QoS 1)
  ``roost/<hub_id>/status``                     ``online``/``offline``, retained, the MQTT will
"""

from __future__ import annotations

import re
from dataclasses import dataclass

READINGS_PREFIX = "roost/readings"
READINGS_FILTER = f"{READINGS_PREFIX}/+/+"
# Areas, sensor kinds, model names and reading ids: at most this many characters.
MAX_NAME_CHARS = 64
# Home Assistant entity ids (``<domain>.<object_id>``): HA's own limit.
MAX_ENTITY_CHARS = 255
_SEGMENT = re.compile(r"[a-z0-9_]+")


def valid_segment(segment: str) -> bool:
    """Areas, sensor kinds, model names: lowercase snake_case, 1 to 64 characters."""
    return len(segment) <= MAX_NAME_CHARS and _SEGMENT.fullmatch(segment) is not None


@dataclass(frozen=True)
class ReadingTopic:
    area: str
    sensor_kind: str


def reading_topic(area: str, sensor_kind: str) -> str:
    return f"{READINGS_PREFIX}/{area}/{sensor_kind}"


def reading_segments(topic: str) -> tuple[str, str] | None:
    """``roost/readings/<area>/<kind>`` -> (area, kind) as given (not yet validated), or
    None if the topic does not have that shape."""
    parts = topic.split("/", 4)
    if len(parts) != 4 or f"{parts[0]}/{parts[1]}" != READINGS_PREFIX:
        return None
    return parts[2], parts[3]


def parse_reading_topic(topic: str) -> ReadingTopic | None:
    """``roost/readings/<area>/<kind>`` -> ReadingTopic, or None if it is not one."""
    segments = reading_segments(topic)
    if segments is None or not (valid_segment(segments[0]) and valid_segment(segments[1])):
        return None
    return ReadingTopic(*segments)


def statestream_filter(base: str) -> str:
    return f"{base}/+/+/state"


def parse_statestream_topic(base: str, topic: str) -> str | None:
    """``<base>/<domain>/<object_id>/state`` -> ``<domain>.<object_id>``, else None."""
    prefix = base + "/"
    if not topic.startswith(prefix) or not topic.endswith("/state"):
        return None
    parts = topic[len(prefix) :].split("/", 3)
    if len(parts) != 3:
        return None
    return f"{parts[0]}.{parts[1]}"


# The object ids of the Roost hub's Home Assistant entities start with this (the device
# name "Roost hub", or the ``object_id`` its discovery configs set).
ROOST_OBJECT_PREFIX = "roost_"


def is_roost_entity(entity_id: str) -> bool:
    """``binary_sensor.roost_hub_occupancy_kitchen``: one of Roost's own entities (which
    ``mqtt_statestream`` may send back to Roost)."""
    return entity_id.partition(".")[2].startswith(ROOST_OBJECT_PREFIX)


def decision_topic(hub_id: str, model: str, area: str) -> str:
    return f"roost/{hub_id}/decisions/{model}/{area}"


def late_decision_topic(hub_id: str, model: str, area: str) -> str:
    """Late decisions (decided after a newer reading of the entity while a backlog
    drained) beside the entity's topic, so that one never goes back in time."""
    return f"{decision_topic(hub_id, model, area)}/late"


def decisions_filter(hub_id: str) -> str:
    return f"roost/{hub_id}/decisions/#"


def status_topic(hub_id: str) -> str:
    return f"roost/{hub_id}/status"
