"""A real Home Assistant core 2025.4.4 on a home broker (``roost run --no-simulator``):
HA logs in with the ``homeassistant`` login that ``roost ha setup`` prints, the hub with its
own, anonymous access is off and each client is held to its ACL (cli/broker.py).

Proves the ACL gives HA what it needs: it reads the hub's discovery configs and states,
sends entity commands (the learning mode), and its ``mqtt_statestream`` reaches the hub,
which decides and acts. ``roost ha setup`` checks the same login against the broker.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from typing import Any

import pytest

from cli.broker import HA_CLIENT
from cli.main import main
from cli.stack import Stack
from tests.support.ha_entities import KINDS, OCCUPIED, VACANT, room_sensors, set_room
from tests.support.ha_roost import start_roost
from tests.support.home_assistant import HomeAssistant
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.home_assistant, pytest.mark.timeout(900)]

HUB_ID = "homebroker"
E = "roost_hub"
ACTIONS = "occupancy.kitchen:vacant=input_boolean.turn_off:input_boolean.kitchen_light"


def _ha_options() -> dict[str, Any]:
    numbers, sensors, areas = room_sensors({"kitchen": "Kitchen"}, KINDS, "homebroker")
    areas["input_boolean.kitchen_light"] = "Kitchen"
    return {
        "home_broker_for": HUB_ID,
        "extra_config": {
            "input_number": numbers,
            "input_boolean": {"kitchen_light": {"name": "Kitchen light"}},
            "template": [{"sensor": sensors}],
        },
        "areas": areas,
    }


HA_OPTIONS = _ha_options()


@pytest.fixture(scope="module")
def roost(
    ha_env: tuple[Stack, HomeAssistant], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    _, ha = ha_env
    assert ha.broker_home is not None
    stack = start_roost(
        ha, tmp_path_factory.mktemp("roost") / "stack", hub_id=HUB_ID, actions=ACTIONS
    )
    stack.write_stack_file()  # what `roost ha setup` reads
    try:
        yield stack
    finally:
        stack.stop()


def test_home_assistant_on_the_home_broker(ha: HomeAssistant, roost: Stack) -> None:
    assert ha.broker_home is not None
    entries = ha.rest("GET", "/api/config/config_entries/entry")
    assert [e["state"] for e in entries if e["domain"] == "mqtt"] == ["loaded"]
    # Discovery and the hub's states reach HA.
    ha.wait_state(f"select.{E}_learning_mode", lambda s: s["state"] == "learning")
    # Fleet learning is not enabled here: each fleet sensor shows "off" (not unavailable).
    fleet = (f"roost_{HUB_ID}_{k}" for k in ("fleet_learning", "fleet_last_round", "fleet_epsilon"))
    for unique_id in fleet:
        entity = wait_until(
            lambda u=unique_id: next(
                (e for e, r in ha.entity_registry().items() if r["unique_id"] == u), None
            ),
            30,
            f"{unique_id} in HA's entity registry",
        )
        ha.wait_state(entity, lambda s: s["state"] == "off")
    # A command from HA reaches the hub, which publishes the new state back.
    for option in ("paused", "learning"):
        ha.call_service(
            "select", "select_option", {"entity_id": f"select.{E}_learning_mode", "option": option}
        )
        ha.wait_state(f"select.{E}_learning_mode", lambda s, o=option: s["state"] == o)
    # HA's statestream reaches the hub: a decision, and the allowed action. Occupied
    # first: the hub decided on HA's initial states at start (resume.py), and a rule fires
    # only on a change of label.
    set_room(ha, "kitchen", OCCUPIED)
    ha.wait_state(f"binary_sensor.{E}_occupancy_kitchen", lambda s: s["state"] == "on", 60)
    ha.call_service("input_boolean", "turn_on", {"entity_id": "input_boolean.kitchen_light"})
    set_room(ha, "kitchen", VACANT)
    ha.wait_state(
        f"binary_sensor.{E}_occupancy_kitchen",
        lambda s: s["state"] == "off" and "why" in s["attributes"],
        60,
    )
    ha.wait_state("input_boolean.kitchen_light", lambda s: s["state"] == "off", 30)
    log = ha.log_path.read_text().lower()
    assert "not authori" not in log
    assert "bad user name or password" not in log


def test_roost_ha_setup_prints_and_checks_the_login(ha: HomeAssistant, roost: Stack) -> None:
    assert ha.broker_home is not None
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["--home", str(roost.home), "ha", "setup", "--timeout", "20"])
    text = out.getvalue()
    assert code == 0, text
    assert f"Password   {ha.broker_home.files.password(HA_CLIENT)}" in text
    assert f"Port       {ha.broker_port}" in text
    assert "Username   homeassistant" in text
    assert f"127.0.0.1:{ha.broker_port} as 'homeassistant': connected; hub is online" in text
