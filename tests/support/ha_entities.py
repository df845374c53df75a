"""What the test Home Assistant is configured with: its configuration.yaml and test entities.

``configuration()`` is the whole configuration.yaml as a dict (written as JSON: JSON is
YAML, and Roost's .venv has no PyYAML): ``http`` on 127.0.0.1, ``recorder`` (SQLite in the
config dir, ``commit_interval: 0``), ``history``, ``logbook``, optionally
``mqtt_statestream``, and the default test entities (``input_boolean``, ``input_number``
and ``template`` sensors with a ``device_class``; template entities need an explicit
``unique_id`` to get an area). ``room_sensors()`` builds settable sensors per room and
``set_room()`` sets them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.support.ha_api import HaApi

# The occupancy model's inputs as settable room sensors (``room_sensors``): kind -> (unit,
# min, max) of their input_number; and one vacant and one occupied room (``set_room``).
KINDS: dict[str, tuple[str, float, float]] = {
    "temperature": ("°C", 5, 35),
    "humidity": ("%", 0, 100),
    "illuminance": ("lx", 0, 2000),
    "carbon_dioxide": ("ppm", 0, 5000),
}
VACANT = {"temperature": 20.3, "humidity": 25.1, "illuminance": 0.0, "carbon_dioxide": 441.7}
OCCUPIED = {"temperature": 22.6, "humidity": 27.3, "illuminance": 523.0, "carbon_dioxide": 953.1}

DEFAULT_STATESTREAM_BASE = "ha_state"
DEFAULT_STATESTREAM_INCLUDE: dict[str, list[str]] = {
    "domains": ["input_boolean", "input_number", "sensor", "binary_sensor"],
}
# entity_id -> area name; the areas are created if missing.
DEFAULT_AREAS: dict[str, str] = {
    "input_boolean.kitchen_light": "Kitchen",
    "input_boolean.kitchen_presence": "Kitchen",
    "binary_sensor.kitchen_occupancy": "Kitchen",
    "input_number.living_room_temperature": "Living Room",
    "sensor.living_room_temperature": "Living Room",
}

DEFAULT_ENTITIES: dict[str, Any] = {
    "input_boolean": {
        "kitchen_light": {"name": "Kitchen light", "icon": "mdi:lightbulb"},
        "kitchen_presence": {"name": "Kitchen presence"},
    },
    "input_number": {
        "living_room_temperature": {
            "name": "Living room temperature",
            "min": 5,
            "max": 35,
            "step": 0.5,
            "initial": 21,
            "mode": "box",
            "unit_of_measurement": "°C",
        }
    },
    "template": [
        {
            "sensor": [
                {
                    "name": "Living room temperature",
                    "unique_id": "roost_test_living_room_temperature",
                    "device_class": "temperature",
                    "state_class": "measurement",
                    "unit_of_measurement": "°C",
                    "state": "{{ states('input_number.living_room_temperature') }}",
                }
            ],
            "binary_sensor": [
                {
                    "name": "Kitchen occupancy",
                    "unique_id": "roost_test_kitchen_occupancy",
                    "device_class": "occupancy",
                    "state": "{{ is_state('input_boolean.kitchen_presence', 'on') }}",
                }
            ],
        }
    ],
}


def configuration(
    config_dir: Path,
    port: int,
    *,
    log_level: str,
    statestream: Mapping[str, Any] | None,
    extra_config: Mapping[str, Any],
) -> dict[str, Any]:
    """configuration.yaml; ``extra_config`` replaces top-level keys (e.g. the entities).

    Location, units and time zone are set here (the ``core_config`` onboarding step is
    skipped: it adds a weather entry that calls the internet). ``default_config:`` is
    avoided (cloud, zeroconf, ssdp, bluetooth...): only the integrations needed.
    """
    config: dict[str, Any] = {
        "homeassistant": {
            "name": "Roost test home",
            "latitude": 52.37,
            "longitude": 4.89,
            "elevation": 0,
            "unit_system": "metric",
            "time_zone": "UTC",
            "country": "NL",
            "currency": "EUR",
            "internal_url": f"http://127.0.0.1:{port}",
        },
        "logger": {"default": log_level},
        "http": {"server_host": ["127.0.0.1"], "server_port": port},
        "api": {},
        "websocket_api": {},
        "config": {},
        "recorder": {
            "db_url": f"sqlite:///{config_dir / 'home-assistant_v2.db'}",
            "commit_interval": 0,
        },
        "history": {},
        "logbook": {},
        **DEFAULT_ENTITIES,
        **extra_config,
    }
    if statestream is not None:
        config["mqtt_statestream"] = dict(statestream)
    return config


def statestream_config(base_topic: str, include: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """``mqtt_statestream``: HA state changes to ``<base>/<domain>/<object_id>/...``."""
    return {
        "base_topic": base_topic,
        "publish_attributes": True,
        "publish_timestamps": False,
        "include": {k: list(v) for k, v in include.items()},
    }


def room_sensors(
    rooms: dict[str, str], kinds: dict[str, tuple[str, float, float]], unique_prefix: str
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, str]]:
    """Settable room sensors for tests: per room (slug -> HA area name) and kind
    (device_class -> unit, min, max), an ``input_number.<room>_<kind>_raw`` and a template
    ``sensor.<room>_<kind>`` with that device_class following it, placed in the area.
    Returns (input_number config, template sensors, entity -> area)."""
    numbers: dict[str, Any] = {}
    sensors: list[dict[str, Any]] = []
    areas: dict[str, str] = {}
    for room, area in rooms.items():
        for kind, (unit, lo, hi) in kinds.items():
            key = f"{room}_{kind}_raw"
            numbers[key] = {
                "name": f"{room} {kind} raw",
                "min": lo,
                "max": hi,
                "step": 0.1,
                "initial": lo + 1,
                "mode": "box",
                "unit_of_measurement": unit,
            }
            sensors.append(
                {
                    "name": f"{area} {kind.replace('_', ' ')}",
                    "unique_id": f"{unique_prefix}_{room}_{kind}",
                    "device_class": kind,
                    "state_class": "measurement",
                    "unit_of_measurement": unit,
                    "state": f"{{{{ states('input_number.{key}') }}}}",
                }
            )
            areas[f"sensor.{room}_{kind}"] = area
    return numbers, sensors, areas


def set_room(ha: HaApi, room: str, values: Mapping[str, float]) -> None:
    """Set the ``room_sensors`` of ``room`` (kind -> value) through HA's services."""
    for kind, value in values.items():
        ha.call_service(
            "input_number",
            "set_value",
            {"entity_id": f"input_number.{room}_{kind}_raw", "value": value},
        )
