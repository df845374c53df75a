"""Which Home Assistant entity feeds which model input: proposed from HA's registries.

Home Assistant knows, for every entity, its area (directly or through its device) and its
``device_class``. Roost's models ask for sensor *kinds* per area (``models/features.py``:
``temperature``, ``humidity``, ``illuminance``, ``carbon_dioxide``, ``energy``; the
routine model's binary ``door`` and ``motion``), so the statestream mapping
``entity -> (area slug, kind)`` follows from the registries with no entity id written
down anywhere. ``ha_mapping = "auto"`` uses it (explicit ``statestream_entities`` entries
still win); ``roost ha check`` prints it per model and area.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hub.ingest import SensorRef, is_household_wide
from hub.topics import valid_segment
from models.features import FeatureSpec

log = logging.getLogger(__name__)

# (domain, device_class) -> sensor kind.
SENSOR_KINDS: dict[tuple[str, str], str] = {
    ("sensor", "temperature"): "temperature",
    ("sensor", "humidity"): "humidity",
    ("sensor", "illuminance"): "illuminance",
    ("sensor", "carbon_dioxide"): "carbon_dioxide",
    ("sensor", "energy"): "energy",
    ("binary_sensor", "door"): "door",
    ("binary_sensor", "garage_door"): "door",
    ("binary_sensor", "motion"): "motion",
    ("binary_sensor", "occupancy"): "motion",
    ("binary_sensor", "presence"): "motion",
}
# Areas whose temperature/humidity describe the weather (kinds outdoor_*).
OUTDOOR_AREAS = frozenset({"outdoor", "outdoors", "outside", "garden", "backyard", "terrace"})
_SLUG = re.compile(r"[^a-z0-9_]+")


def slug(name: str) -> str:
    """An area id or name as a Roost topic segment ("Living Room" -> "living_room")."""
    return _SLUG.sub("_", name.strip().lower()).strip("_")[:64]


@dataclass
class Proposal:
    """The proposed mapping, and why the other sensor entities were left out."""

    mapping: dict[str, SensorRef] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    # area slug -> Home Assistant's name of the area ("living_room" -> "Living Room").
    area_names: dict[str, str] = field(default_factory=dict)

    def entries(self) -> tuple[str, ...]:
        """As ``statestream_entities`` entries ("sensor.x=kitchen/temperature")."""
        return tuple(f"{e}={r.area}/{r.sensor_kind}" for e, r in sorted(self.mapping.items()))


def _is_roost(entry: Mapping[str, Any]) -> bool:
    return entry.get("platform") == "mqtt" and str(entry.get("unique_id", "")).startswith("roost_")


def propose(registries: Mapping[str, Sequence[Mapping[str, Any]]]) -> Proposal:
    """From ``{"area": [...], "device": [...], "entity": [...], "states": [...]}`` (the
    websocket ``config/*_registry/list`` results and ``get_states``)."""
    areas = {
        a["area_id"]: slug(str(a.get("area_id") or a.get("name", ""))) for a in registries["area"]
    }
    device_area = {d["id"]: d.get("area_id") for d in registries.get("device", [])}
    attributes = {s["entity_id"]: s.get("attributes") or {} for s in registries.get("states", [])}
    proposal = Proposal(
        area_names={areas[a["area_id"]]: str(a.get("name") or "") for a in registries["area"]}
    )
    for entry in registries["entity"]:
        entity_id = str(entry.get("entity_id", ""))
        domain = entity_id.partition(".")[0]
        if domain not in ("sensor", "binary_sensor"):
            continue
        if entry.get("disabled_by"):
            proposal.skipped[entity_id] = "disabled"
            continue
        if _is_roost(entry):
            continue  # Roost's own entities never feed Roost
        device_class = (
            entry.get("device_class")
            or entry.get("original_device_class")
            or attributes.get(entity_id, {}).get("device_class")
        )
        kind = SENSOR_KINDS.get((domain, str(device_class)))
        if kind is None:
            proposal.skipped[entity_id] = f"device_class {device_class} is no model input"
            continue
        area_id = entry.get("area_id") or device_area.get(entry.get("device_id") or "")
        if not area_id or area_id not in areas:
            proposal.skipped[entity_id] = "no area (assign one in Home Assistant)"
            continue
        area = areas[area_id]
        if area in OUTDOOR_AREAS and kind in ("temperature", "humidity"):
            kind = f"outdoor_{kind}"
        if not valid_segment(area):
            proposal.skipped[entity_id] = "area name cannot be a Roost area"
            continue
        proposal.mapping[entity_id] = SensorRef(area, kind)
    return proposal


def merge(auto: Mapping[str, SensorRef], explicit: Mapping[str, SensorRef]) -> dict[str, SensorRef]:
    """Explicit entries override (or add to) the proposed ones."""
    return {**auto, **explicit}


def save(path: Path, mapping: Mapping[str, SensorRef]) -> None:
    """Keep the last auto mapping so the hub starts with it while HA is away."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    doc = {e: f"{r.area}/{r.sensor_kind}" for e, r in sorted(mapping.items())}
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(path)


def load(path: Path) -> dict[str, SensorRef]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    out: dict[str, SensorRef] = {}
    for entity, target in doc.items():
        area, _, kind = str(target).partition("/")
        if valid_segment(area) and valid_segment(kind):
            out[str(entity)] = SensorRef(area, kind)
    return out


@dataclass(frozen=True)
class InputStatus:
    model: str
    area: str
    kind: str
    entities: tuple[str, ...]


def coverage(
    specs: Mapping[str, FeatureSpec],
    mapping: Mapping[str, SensorRef],
    home_models: Mapping[str, Iterable[str]] = {},
) -> list[InputStatus]:
    """Per model and area, each input kind and the entities mapped to it (empty: unmapped).

    Areas are those with at least one mapped input of the model; weather kinds
    (``outdoor_*``) come from any area. Home-wide models (routine) list their kinds for
    the area ``home``.
    """
    by_kind: dict[tuple[str, str], list[str]] = {}
    household: dict[str, list[str]] = {}
    for entity, ref in sorted(mapping.items()):
        by_kind.setdefault((ref.area, ref.sensor_kind), []).append(entity)
        if is_household_wide(ref.sensor_kind):
            household.setdefault(ref.sensor_kind, []).append(entity)
    out: list[InputStatus] = []
    for model, spec in sorted(specs.items()):
        areas = sorted(
            {
                r.area
                for r in mapping.values()
                if r.sensor_kind in spec.sensor_kinds and not is_household_wide(r.sensor_kind)
            }
        )
        for area in areas:
            for kind in sorted(spec.sensor_kinds):
                found = (
                    household.get(kind, [])
                    if is_household_wide(kind)
                    else by_kind.get((area, kind), [])
                )
                out.append(InputStatus(model, area, kind, tuple(found)))
    for model, kinds in sorted(home_models.items()):
        for kind in sorted(kinds):
            found = sorted(e for e, r in mapping.items() if r.sensor_kind == kind)
            out.append(InputStatus(model, "home", kind, tuple(found)))
    return out
