"""Roost's processes on a test Home Assistant's broker: the stack the HA tests drive.

``start_roost(ha, home, ...)`` starts audit, inference, update, personalization and the hub
with the HA integration on (``ha_mapping = "auto"`` from statestream, polling HA every
second, the given allow-list of actions), all on ``ha.broker_port`` (with the hub's login
when it is a home broker).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from cli.stack import Stack
from services.kit.auth import Role
from tests.support.home_assistant import HomeAssistant


def start_roost(
    ha: HomeAssistant,
    home: Path,
    *,
    hub_id: str,
    actions: str,
    service_env: Mapping[Role, Mapping[str, str]] | None = None,
    personalization_timeout: float = 60,
    hub_env: Mapping[str, str] | None = None,
) -> Stack:
    """The services and the hub under ``home``; ``service_env`` adds environment per role,
    ``hub_env`` the hub's. Stops what it started if any of it fails."""
    env = service_env or {}
    stack = Stack(home, hub_id=hub_id)
    stack.broker_port = ha.broker_port
    # A home broker: the hub logs in with its generated password.
    stack.broker_home = ha.broker_home
    token = home / "ha-token"
    token.write_text(ha.token)
    try:
        stack.start_service(Role.AUDIT, env.get(Role.AUDIT))
        stack.start_service(Role.INFERENCE, env.get(Role.INFERENCE))
        stack.start_service(Role.UPDATE, env.get(Role.UPDATE))
        stack.start_service(
            Role.PERSONALIZATION, env.get(Role.PERSONALIZATION), timeout=personalization_timeout
        )
        # Stack.start_hub passes ROOST_HUB_PERSONALIZATION_TARGET and _UPDATE_TARGET.
        stack.start_hub(
            {
                "ROOST_HUB_HA_URL": ha.url,
                "ROOST_HUB_HA_TOKEN_FILE": str(token),
                "ROOST_HUB_HA_MAPPING": "auto",
                "ROOST_HUB_STATESTREAM_BASE": ha.statestream_base,
                "ROOST_HUB_HA_POLL_SECONDS": "1",
                "ROOST_HUB_HA_ACTIONS": actions,
                **(hub_env or {}),
            }
        )
    except BaseException:
        stack.stop()
        raise
    return stack
