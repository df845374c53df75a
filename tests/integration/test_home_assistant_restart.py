"""A Roost restart in a REAL Home Assistant (2025.4.4) never repeats an action.

The homeowner's story from issue 17: Roost switched the kitchen light off (the kitchen
went vacant), the homeowner switched it back on, Roost restarted, and its first decision
switched the light off again. Here: the same, against a real HA, a real mosquitto and real
Roost processes; the decisions after the restart must not fire (their audited verdict says
why) and the light must stay on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from cli.stack import Stack
from hub.action_memory import MEMORY_FILE, ActionMemory
from roost.audit.v1 import audit_service_pb2 as audit_pb
from tests.support.ha_entities import KINDS, OCCUPIED, VACANT, room_sensors, set_room
from tests.support.ha_roost import start_roost
from tests.support.home_assistant import HomeAssistant
from tests.support.metrics import metric
from tests.support.mqtt_helpers import audit_stub
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.home_assistant, pytest.mark.timeout(600)]

HUB_ID = "harestart"
# Still vacant, other values: a new state for mqtt_statestream, so a new decision.
STILL_VACANT = {"temperature": 20.4, "humidity": 25.3, "illuminance": 0.0, "carbon_dioxide": 442.9}
LIGHT = "input_boolean.kitchen_light"
SENSOR = "binary_sensor.roost_hub_occupancy_kitchen"


def _ha_options() -> dict[str, Any]:
    numbers, sensors, areas = room_sensors({"kitchen": "Kitchen"}, KINDS, "roostrestart")
    areas[LIGHT] = "Kitchen"
    return {
        "extra_config": {
            "input_number": numbers,
            "input_boolean": {"kitchen_light": {"name": "Kitchen light"}},
            "template": [{"sensor": sensors}],
        },
        "areas": areas,
    }


HA_OPTIONS = _ha_options()


@pytest.fixture(scope="module")
def roost(ha: HomeAssistant, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = start_roost(
        ha,
        tmp_path_factory.mktemp("roost") / "stack",
        hub_id=HUB_ID,
        actions=f"occupancy.kitchen:vacant=input_boolean.turn_off:{LIGHT}",
    )
    try:
        yield stack
    finally:
        stack.stop()


async def verdict(stack: Stack, decision_id: str) -> audit_pb.Decision:
    resp = await audit_stub(stack).GetDecision(
        audit_pb.GetDecisionRequest(decision_id=decision_id), timeout=5
    )
    return resp.entry.decision


def restart_hub(stack: Stack) -> None:
    """Stop the hub (SIGTERM, as a reboot or an upgrade would) and start it again as it was."""
    stack.stop_one("hub")
    stack.respawn("hub")
    wait_until(lambda: stack.poll_ready("hub"), 30, "the restarted hub to be ready")


async def test_a_restart_never_repeats_an_action(ha: HomeAssistant, roost: Stack) -> None:
    # Occupied first (the hub decided on HA's initial states at its start, see resume.py):
    # then vacant is a change of label.
    await asyncio.to_thread(set_room, ha, "kitchen", OCCUPIED)
    await asyncio.to_thread(ha.wait_state, SENSOR, lambda s: s["state"] == "on", 40)
    ha.call_service("input_boolean", "turn_on", {"entity_id": LIGHT})
    await asyncio.to_thread(set_room, ha, "kitchen", VACANT)
    # The action fires: audited ALLOWED, the light goes off.
    await asyncio.to_thread(ha.wait_state, LIGHT, lambda s: s["state"] == "off", 40)
    first = await asyncio.to_thread(
        ha.wait_state, SENSOR, lambda s: s["state"] == "off" and "decision_id" in s["attributes"]
    )
    first_id = first["attributes"]["decision_id"]
    memory = ActionMemory.load(roost.home / "data" / "hub" / MEMORY_FILE)
    assert memory.labels == {"occupancy.kitchen": "vacant"}
    assert memory.actions[LIGHT]["action"] == "input_boolean.turn_off"
    # The decision that called it (the later vacant ones while the values were set: not
    # a change, not repeated).
    allowed = await verdict(roost, memory.actions[LIGHT]["decision_id"])
    assert allowed.policy.verdict == audit_pb.POLICY_VERDICT_ALLOWED
    # The homeowner wants the light on after all; then Roost restarts.
    ha.call_service("input_boolean", "turn_on", {"entity_id": LIGHT})
    await asyncio.to_thread(ha.wait_state, LIGHT, lambda s: s["state"] == "on")
    await asyncio.to_thread(restart_hub, roost)
    # The first decision after the restart: still vacant, not a change, no action.
    await asyncio.to_thread(set_room, ha, "kitchen", STILL_VACANT)
    after = await asyncio.to_thread(
        ha.wait_state,
        SENSOR,
        lambda s: s["attributes"].get("decision_id") not in (None, first_id),
        40,
    )
    decision = await verdict(roost, after["attributes"]["decision_id"])
    assert decision.policy.verdict == audit_pb.POLICY_VERDICT_NOT_APPLICABLE
    assert "not repeated" in decision.policy.reason
    assert decision.action == "publish"
    # No action was even submitted by the restarted hub, and the light is still on.
    for outcome in ("called", "unneeded", "failed"):
        assert metric(roost, "roost_hub_ha_actions_total", outcome=outcome) == 0
    assert ha.state(LIGHT)["state"] == "on"  # type: ignore[index]
