"""The fleet learning sensors from a real audit log, through the real hub process.

A real mosquitto, audit and inference service, and the hub with ``ROOST_FLEET_ENABLED``
(``[fleet] enabled``, as ``roost run`` and k3s's fleet component set it). ``fleet.send``
and ``fleet.sit_out`` records go into the audit log the way the ClientApp writes them
(``fleet.egress.append_records`` as the hub, over mTLS); the hub's retained state document
must then show the round, its ε and the sit-out. With fleet off, Home Assistant shows
"off": tests/integration/test_home_assistant_home_broker.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from cli.stack import Stack
from fleet.egress import SIT_OUT, Egress, append_records
from fleet.hub_node import HubNode
from hub import mqtt
from hub.homeassistant.fleet_entities import NO_BUDGET, NO_ROUND
from hub.homeassistant.topics import ha_filter, state_topic, sync_topic
from hub.homeassistant.uninstall import retained_messages
from roost.audit.v1 import audit_service_pb2 as audit_pb
from services.kit.auth import Role
from tests.support.stacks import require_mosquitto
from tests.support.waiting import wait_for_async

pytestmark = pytest.mark.integration

HUB_ID = "fleetha"
SUPERLINK = "fleet.example:9092"
STAGES = ("setup", "share_keys", "collect_masked_vectors", "unmask")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_mosquitto()
    stack = Stack(tmp_path_factory.mktemp("fleet-ha"), hub_id=HUB_ID)
    try:
        stack.start_broker()
        stack.start_service(Role.AUDIT)
        stack.start_service(Role.INFERENCE)
        stack.start_hub({"ROOST_FLEET_ENABLED": "true", "ROOST_HUB_HA_POLL_SECONDS": "0.5"})
    except BaseException:
        stack.stop()
        raise
    yield stack
    stack.stop()


def node(stack: Stack) -> HubNode:
    return HubNode(
        hub_id=HUB_ID,
        certs_dir=stack.certs_dir,
        personalization="127.0.0.1:1",  # not called
        audit=f"127.0.0.1:{stack.port_of(Role.AUDIT)}",
        superlink=SUPERLINK,
    )


def round_records(round_id: str, epsilon: float, at: datetime) -> list[audit_pb.Decision]:
    """A SecAgg+ round's 4 records as the egress mod writes them; only the masked vector
    carries model data and the ledger's charge."""
    out = []
    for stage in STAGES:
        charged = epsilon if stage == "collect_masked_vectors" else 0.0
        egress = Egress(round_id, stage, SUPERLINK, "1.0.0", "cd" * 32, 420, "m", charged)
        d = egress.decision(HUB_ID, "occupancy", 7)
        d.decided_at.FromDatetime(at)
        out.append(d)
    return out


async def fleet_doc(stack: Stack) -> dict[str, Any] | None:
    async with mqtt.client("127.0.0.1", stack.broker_port) as client:
        held = await retained_messages(client, [ha_filter(HUB_ID)], sync_topic(HUB_ID))
    payload = held.get(state_topic(HUB_ID, "fleet"))
    return None if payload is None else dict(json.loads(payload))


def wait_doc(stack: Stack, **expected: Any) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    async def shows() -> bool:
        nonlocal seen
        seen = await fleet_doc(stack) or {}
        return all(seen.get(k) == v for k, v in expected.items())

    asyncio.run(wait_for_async(shows, 30, f"the hub's fleet document shows {expected}"))
    return seen


def test_enabled_without_a_round_shows_on(stack: Stack) -> None:
    doc = wait_doc(stack, state="on", enabled=True)
    assert (doc["last_round_at"], doc["round_epsilon"]) == (NO_ROUND, NO_ROUND)


def test_the_last_round_and_its_charge_from_the_audit_log(stack: Stack) -> None:
    append_records(node(stack), round_records("5-1", 0.5, datetime(2026, 12, 5, 9, 0, tzinfo=UTC)))
    newest = datetime(2026, 12, 5, 10, 30, 15, tzinfo=UTC)
    append_records(node(stack), round_records("5-2", 0.0625, newest))
    doc = wait_doc(stack, round="5-2")
    assert doc["state"] == "on"
    assert doc["last_round_at"] == "2026-12-05 10:30:15 UTC"
    assert doc["round_epsilon"] == 0.0625  # round 5-2's charge alone


def test_a_sit_out_after_it_shows_no_budget(stack: Stack) -> None:
    sat = Egress("5-3", "setup", SUPERLINK, "", "", 0, "none (sat out)", 0.0).decision(
        HUB_ID, "occupancy", 7
    )
    sat.action = SIT_OUT
    sat.decision_id = f"{SIT_OUT}.5-3.setup.7"
    sat.model.sha256 = "-"
    # The reason as the ClientApp records the ledger's refusal (ledger_refusals.over_budget).
    sat.policy.reason = (
        "sat round 5-3 out, nothing sent: privacy budget exceeded for scope 'household':"
        " epsilon already spent 3.0000 in the last 91 days"
    )
    append_records(node(stack), [sat])
    doc = wait_doc(stack, state=NO_BUDGET)
    # The round that was sent stays shown beside the sit-out.
    assert (doc["round"], doc["round_epsilon"]) == ("5-2", 0.0625)
    assert doc["why"].endswith("in the last 91 days")
