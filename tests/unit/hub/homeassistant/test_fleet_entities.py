"""The fleet learning sensors: off when ``[fleet]`` is off (never unavailable, no audit
call), the last round and its ε from ``fleet.send`` records, a sit-out when it is the
newest record, the last answer kept while the audit log is down. A stand-in audit log
here; the real one: tests/integration/test_fleet_entities.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest

from fleet import egress
from fleet.egress import Egress
from hub.homeassistant import fleet_entities
from hub.homeassistant.bridge import HaBridge
from hub.homeassistant.coordinator import Coordinator
from hub.homeassistant.fleet_entities import (
    NO_BUDGET,
    NO_ROUND,
    OVER_HUB_LIMIT,
    SEND_ACTION,
    SIT_OUT_ACTION,
    FleetStatus,
    round_document,
)
from hub.homeassistant.settings import Settings
from roost.audit.v1 import audit_service_pb2 as audit_pb
from roost.personalization.v1 import personalization_service_pb2 as pers_pb
from services.personalization.ledger_records import BudgetPolicy
from services.personalization.ledger_refusals import over_budget
from tests.unit.hub.homeassistant.test_entities import render

STAGES = ("setup", "share_keys", "collect_masked_vectors", "unmask")
BUDGET = {"delta": 1e-3, "privacy_unit": "day", "epsilon_spent": 0.5}


def send(index: int, round_id: str, stage: str, epsilon: float, minute: int) -> audit_pb.LogEntry:
    d = Egress(round_id, stage, "fleet.example:9092", "1.0.0", "ab" * 32, 100, "m", epsilon)
    decision = d.decision("h1", "occupancy", 7)
    decision.decided_at.FromDatetime(datetime(2026, 12, 5, 12, minute, 0, tzinfo=UTC))
    return audit_pb.LogEntry(index=index, decision=decision)


def secagg_round(first_index: int, round_id: str, epsilon: float, minute: int) -> list[Any]:
    """A SecAgg+ round's 4 records, oldest first; only the masked vector is charged."""
    return [
        send(
            first_index + i, round_id, s, epsilon if s == "collect_masked_vectors" else 0.0, minute
        )
        for i, s in enumerate(STAGES)
    ]


def sit_out(index: int, reason: str, minute: int) -> audit_pb.LogEntry:
    entry = send(index, "0-9", "setup", 0.0, minute)
    entry.decision.action = SIT_OUT_ACTION
    entry.decision.policy.reason = f"sat round 0-9 out, nothing sent: {reason}"
    return entry


class FakeAudit:
    """QueryDecisions over a list of entries (newest first, by action), or an error."""

    def __init__(self, entries: list[audit_pb.LogEntry]) -> None:
        self.entries = entries
        self.calls = 0
        self.down = False

    async def QueryDecisions(
        self, request: audit_pb.QueryDecisionsRequest, timeout: float
    ) -> audit_pb.QueryDecisionsResponse:
        self.calls += 1
        if self.down:
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata()
            )
        assert request.newest_first
        found = [e for e in self.entries if e.decision.action == request.action]
        found.sort(key=lambda e: -e.index)
        return audit_pb.QueryDecisionsResponse(entries=found[: request.page_size])


def document(status: FleetStatus, budget: dict[str, Any] | None = None) -> dict[str, Any]:
    return asyncio.run(status.document(budget, "learning"))


def shown(doc: dict[str, Any]) -> dict[str, str]:
    """What each sensor shows in Home Assistant (its value template over the document)."""
    payload = json.dumps(doc).encode()
    return {key: render(c["value_template"], payload) for key, c in fleet_entities.components("h1")}


def attributes(doc: dict[str, Any], key: str) -> dict[str, Any]:
    component = dict(fleet_entities.components("h1"))[key]
    return dict(json.loads(render(component["json_attributes_template"], json.dumps(doc).encode())))


def test_the_actions_are_the_ones_the_fleet_client_records() -> None:
    assert (SEND_ACTION, SIT_OUT_ACTION) == (egress.SEND, egress.SIT_OUT)


def test_fleet_off_shows_off_everywhere_and_asks_no_audit_log() -> None:
    audit = FakeAudit(secagg_round(0, "1-1", 0.3, 1))
    doc = document(FleetStatus(enabled=False, audit=audit), BUDGET)  # type: ignore[arg-type]
    assert shown(doc) == {
        "fleet_learning": "off",
        "fleet_last_round": "off",
        "fleet_epsilon": "off",
    }
    assert audit.calls == 0


def test_on_without_a_round_says_so() -> None:
    doc = document(FleetStatus(enabled=True, audit=FakeAudit([])), BUDGET)  # type: ignore[arg-type]
    assert shown(doc) == {
        "fleet_learning": "on",
        "fleet_last_round": NO_ROUND,
        "fleet_epsilon": NO_ROUND,
    }


def test_the_last_round_its_time_and_only_its_charge() -> None:
    entries = [*secagg_round(0, "1-1", 0.25, 1), *secagg_round(4, "1-2", 0.125, 7)]
    doc = document(FleetStatus(enabled=True, audit=FakeAudit(entries)), BUDGET)  # type: ignore[arg-type]
    assert shown(doc) == {
        "fleet_learning": "on",
        "fleet_last_round": "2026-12-05 12:07:00 UTC",
        "fleet_epsilon": "0.125",  # round 1-2's charge, not the sum with round 1-1's
    }
    eps = attributes(doc, "fleet_epsilon")
    assert (eps["round"], eps["delta"], eps["privacy_unit"]) == ("1-2", 1e-3, "day")
    assert "privacy unit" in eps["meaning"]
    assert attributes(doc, "fleet_last_round")["model"] == "occupancy"


def test_a_plain_round_without_secagg_counts_too() -> None:
    doc = round_document([send(3, "2-1", "plain", 0.5, 9)], None)
    assert (doc["round"], doc["round_epsilon"]) == ("2-1", 0.5)


@pytest.mark.parametrize(
    ("reason", "state"),
    [
        (
            "privacy budget exceeded for scope 'household': epsilon already spent 3.0000",
            NO_BUDGET,
        ),
        ("the server asks min-participants 500, above this hub's limit 100", OVER_HUB_LIMIT),
        # Not a budget refusal: not called one.
        (
            "model occupancy: a fleet round needs at least 50 labelled examples; 3 are stored",
            "sitting out",
        ),
    ],
)
def test_a_sit_out_after_the_last_round_shows_why(reason: str, state: str) -> None:
    entries = [*secagg_round(0, "1-1", 0.25, 1), sit_out(4, reason, 8)]
    doc = document(FleetStatus(enabled=True, audit=FakeAudit(entries)), BUDGET)  # type: ignore[arg-type]
    assert shown(doc)["fleet_learning"] == state
    # The last round that was sent stays shown.
    assert shown(doc)["fleet_epsilon"] == "0.25"
    assert attributes(doc, "fleet_learning")["why"].endswith(reason)


def test_the_ledgers_own_refusal_reads_as_no_budget() -> None:
    """The words the hub looks for are the ones the ledger writes (through the ClientApp's
    SitOut reason into the fleet.sit_out record)."""
    refusal = over_budget("household", BudgetPolicy(3.0, 1e-3), (2.9, 3.4), "rdp", None)
    entry = sit_out(4, str(refusal), 8)
    assert round_document([], entry)["state"] == NO_BUDGET


def test_a_round_sent_after_a_sit_out_is_on_again() -> None:
    entries = [sit_out(0, "no budget", 1), *secagg_round(1, "1-2", 0.25, 2)]
    doc = document(FleetStatus(enabled=True, audit=FakeAudit(entries)), BUDGET)  # type: ignore[arg-type]
    assert shown(doc)["fleet_learning"] == "on"


def test_the_last_answer_stays_while_the_audit_log_is_down() -> None:
    audit = FakeAudit(secagg_round(0, "1-1", 0.25, 1))
    status = FleetStatus(enabled=True, audit=audit)  # type: ignore[arg-type]
    before = shown(document(status, BUDGET))
    audit.down = True
    assert shown(document(status, BUDGET)) == before
    assert audit.calls >= 3


def test_a_record_with_an_odd_label_is_no_crash() -> None:
    odd = send(0, "1-1", "plain", 0.5, 1)
    odd.decision.output_label = "[1, 2"
    del odd.decision.output_values[:]
    doc = round_document([odd], None)
    assert (doc["round"], doc["round_epsilon"]) == ("", 0.0)


def test_the_bridge_adds_the_three_sensors_on_the_hubs_availability_only(
    make_bridge: Callable[..., HaBridge],
) -> None:
    cmps = make_bridge().components
    for key in ("fleet_learning", "fleet_last_round", "fleet_epsilon"):
        assert cmps[key]["p"] == "sensor"
        assert cmps[key]["state_topic"] == "roost/home-1/ha/state/fleet"
        assert cmps[key]["availability"] == [{"topic": "roost/home-1/status"}]
        # A plain text state: "off" must stay a valid state.
        assert "unit_of_measurement" not in cmps[key]
        assert "device_class" not in cmps[key]
    assert cmps["fleet_epsilon"]["name"] == "Fleet round ε"


class FakePersonalization:
    async def SetLearningMode(self, request: Any, timeout: float) -> Any:
        return pers_pb.SetLearningModeResponse(mode=request.mode)

    async def GetPrivacyBudget(self, request: Any, timeout: float) -> Any:
        budget = pers_pb.PrivacyBudget(
            epsilon_spent=0.5, epsilon_limit=3.0, delta=1e-3, privacy_unit="day"
        )
        return pers_pb.GetPrivacyBudgetResponse(budget=budget)


@pytest.mark.parametrize("personalization", [FakePersonalization(), None])
def test_the_coordinator_pushes_the_document_with_the_budgets_delta(
    personalization: FakePersonalization | None,
) -> None:
    pushed: dict[str, tuple[bytes, bool]] = {}
    c = Coordinator(
        hub_id="home-1",
        models=[],
        settings=Settings(),
        inference=None,  # type: ignore[arg-type]
        personalization=personalization,  # type: ignore[arg-type]
        update=None,
        fleet=FleetStatus(enabled=True, audit=FakeAudit(secagg_round(0, "1-1", 0.25, 1))),  # type: ignore[arg-type]
        push=lambda topic, payload, retain: pushed.__setitem__(topic, (payload, retain)),
        spawn=lambda coro: None,
    )
    asyncio.run(c.poll_once())
    payload, retain = pushed["roost/home-1/ha/state/fleet"]
    assert retain
    doc = json.loads(payload)
    assert (doc["state"], doc["round_epsilon"]) == ("on", 0.25)
    if personalization is None:
        # No budget to read δ from: no δ is made up.
        assert "delta" not in doc
    else:
        assert (doc["delta"], doc["privacy_unit"]) == (1e-3, "day")
