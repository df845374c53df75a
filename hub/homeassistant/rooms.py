"""Roost's entities in their rooms, and decisions that go stale.

* **One device per area.** The entities of an area (its predictions, "was wrong" buttons
  and "what was it?" selects) belong to the device "Roost <Area>" (``suggested_area``: HA's
  name of the area, ``via_device``: the Roost hub), so Home Assistant places them in that
  room: they appear in Kitchen and Living Room. HA matches the name ignoring case and
  spaces (it creates the area if there is none). The home-wide area ``home`` (routine) stays
  on the hub device. An ``object_id`` keeps the entity ids the hub device gives
  (``binary_sensor.roost_hub_occupancy_kitchen``); HA uses it only for a new entity, so
  existing ids never change.
* **Stale decisions are unavailable.** A prediction of an area has ``expire_after``: with no new
  decision for that long, HA shows it unavailable, never an old decision as current (also
  when the hub comes back after a longer stop). Like every entity it is unavailable while
  the hub's status topic (its MQTT will) says ``offline``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hub.homeassistant.entities import ROOST_VERSION
from hub.homeassistant.mapping import slug
from hub.homeassistant.topics import device_id
from hub.windows import HOME_AREA

# The entity ids of the hub device start with its name, "Roost hub".
OBJECT_PREFIX = "roost_hub_"


def area_name(area: str, names: Mapping[str, str]) -> str:
    """HA's name of ``area`` (a slug) if known, else the slug in words ("Living room")."""
    return names.get(area) or area.replace("_", " ").capitalize()


def area_device(hub_id: str, area: str, name: str) -> dict[str, Any]:
    """The device of one area's entities."""
    return {
        "ids": [f"{device_id(hub_id)}_area_{area}"],
        "name": f"Roost {name}",
        "mf": "Roost",
        "mdl": "Roost room",
        "sw": ROOST_VERSION,
        "sa": name,
        "via_device": device_id(hub_id),
    }


class Rooms:
    """Places a (model, area)'s entities on their area's device; predictions expire."""

    def __init__(
        self, hub_id: str, *, expire_after_seconds: int = 0, names: Mapping[str, str] = {}
    ) -> None:
        if expire_after_seconds < 0:
            raise ValueError("expire_after_seconds must be >= 0 (0: never)")
        self.hub_id = hub_id
        self.expire_after_seconds = expire_after_seconds
        # area slug -> Home Assistant's name of the area (from its area registry).
        self.names: dict[str, str] = dict(names)

    def place(self, area: str, component: dict[str, Any]) -> dict[str, Any]:
        """``component`` on the device of ``area`` (unchanged for the home-wide area)."""
        if area == HOME_AREA:
            return component
        component["dev"] = area_device(self.hub_id, area, area_name(area, self.names))
        component.setdefault("object_id", OBJECT_PREFIX + slug(str(component["name"])))
        return component

    def prediction(self, area: str, component: dict[str, Any]) -> dict[str, Any]:
        """A prediction: placed, and unavailable once its decision is older than
        ``expire_after_seconds`` (if set). Not the home-wide one: its decisions come with
        events, and a quiet home (asleep, away) has none for hours."""
        if self.expire_after_seconds and area != HOME_AREA:
            component["expire_after"] = self.expire_after_seconds
        return self.place(area, component)
