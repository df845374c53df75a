"""Headless set-up of a fresh Home Assistant: onboarding, the MQTT entry, areas.

* Before onboarding every authenticated endpoint answers 401; ``/api/onboarding`` answers
  without auth (hence the first boot's readiness probe).
* ``POST /api/onboarding/users`` needs ``client_id`` as a URL and ``language``; it returns
  an auth code (not a token) and also creates the default areas "Living Room", "Kitchen"
  and "Bedroom", so areas are looked up by name before any is created.
* The MQTT integration is config-entry only (YAML ``mqtt: broker:`` is gone): flow
  ``{"handler": "mqtt"}`` goes straight to the ``broker`` step outside the Supervisor.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tests.support.ha_api import HaApi
from tests.support.ha_process import HomeAssistantError

CLIENT_ID = "http://127.0.0.1:8123/"  # any URL; HA's IndieAuth wants one
OWNER = {"name": "Roost Test", "username": "roost", "password": "roost-test-password"}


def onboard(ha: HaApi) -> str:
    """Owner creation -> auth code -> access token -> a long-lived token (returned; also
    left in ``ha.token``)."""
    created = ha.rest(
        "POST",
        "/api/onboarding/users",
        {**OWNER, "client_id": CLIENT_ID, "language": "en"},
        auth=False,
    )
    tokens = ha.rest(
        "POST",
        "/auth/token",
        form={
            "grant_type": "authorization_code",
            "code": created["auth_code"],
            "client_id": CLIENT_ID,
        },
        auth=False,
    )
    ha.token = tokens["access_token"]
    token: str = ha.ws(
        {"type": "auth/long_lived_access_token", "client_name": "roost-tests", "lifespan": 30}
    )
    ha.token = token
    return token


def add_mqtt_entry(
    ha: HaApi, broker_port: int, login: tuple[str, str] | None = None
) -> dict[str, Any]:
    """The MQTT integration's config entry for the broker on 127.0.0.1:``broker_port``,
    with ``login`` (username, password) as a user enters them in the form."""
    flow = ha.rest("POST", "/api/config/config_entries/flow", {"handler": "mqtt"})
    if flow.get("step_id") != "broker":
        raise HomeAssistantError(f"unexpected MQTT flow step: {flow}")
    fields: dict[str, Any] = {"broker": "127.0.0.1", "port": broker_port}
    if login is not None:
        fields.update(username=login[0], password=login[1])
    result: dict[str, Any] = ha.rest(
        "POST", f"/api/config/config_entries/flow/{flow['flow_id']}", fields
    )
    if result.get("type") != "create_entry":
        raise HomeAssistantError(f"MQTT config entry not created: {result}")
    return result


def assign_areas(ha: HaApi, areas: Mapping[str, str]) -> None:
    """Create the areas that are missing (onboarding made some) and assign the entities
    (``entity_id -> area name``)."""
    existing = {a["name"]: a["area_id"] for a in ha.area_registry()}
    missing = sorted(set(areas.values()) - set(existing))
    if missing:
        created = ha.ws_many([{"type": "config/area_registry/create", "name": n} for n in missing])
        existing |= {a["name"]: a["area_id"] for a in created}
    ha.ws_many(
        [
            {
                "type": "config/entity_registry/update",
                "entity_id": entity_id,
                "area_id": existing[area],
            }
            for entity_id, area in areas.items()
        ]
    )
