"""Fleet learning in Home Assistant: whether this hub takes part, its last round and the ε
that round cost.

Three sensors of the Roost hub device read one retained state document (``fleet``), which
the coordinator pushes at each poll, as it does the privacy budget's:

* **Fleet learning**: ``off`` (``[fleet] enabled`` is false: no SuperNode, no fleet
  connection), ``off: local-only (set in Home Assistant)`` or ``off: paused (set in Home
  Assistant)`` (the homeowner's learning mode, which the personalization service
  enforces: it refuses every round, :mod:`hub.homeassistant.learning_sync`), ``on``, or,
  when the hub's newest fleet record is a sit-out,
  ``sitting out: no budget`` (its privacy ledger refused the round's charge),
  ``sitting out: the server's min-participants is above this hub's limit``
  (``[fleet] max_min_participants``: each hub would add too little noise) or
  ``sitting out`` (another refusal: too few examples...; the ``why`` attribute says);
* **Last fleet round**: when the hub last sent a reply of a round (the newest
  ``fleet.send`` of its audit log), in UTC;
* **Fleet round ε**: the ε the hub's privacy ledger charged for that round (the sum over
  the round's ``fleet.send`` records: only the reply carrying model data is charged),
  with δ and the privacy unit of the household budget as attributes.

Everything comes from the hub's config and its audit log (``QueryDecisions`` as the hub),
never from the fleet: with fleet learning off each sensor shows ``off``, not unavailable.
While the audit log does not answer, the last round it named stays shown.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC
from typing import Any, Final

import grpc

from hub.homeassistant.topics import state_topic
from roost.audit.v1 import audit_service_pb2 as audit_pb
from roost.audit.v1 import audit_service_pb2_grpc as audit_grpc
from services.kit.peers import peer_error

log = logging.getLogger(__name__)

#: The state document's key (topic ``roost/<hub_id>/ha/fleet``).
FLEET_KEY: Final = "fleet"
# The actions fleet/egress.py records (SEND, SIT_OUT); the hub does not import the fleet
# package (tests/unit/hub/homeassistant/test_fleet_entities.py keeps them equal).
SEND_ACTION: Final = "fleet.send"
SIT_OUT_ACTION: Final = "fleet.sit_out"
# The newest fleet.send records read per poll: a SecAgg+ round writes 4, so a round's
# charged reply is among them.
RECENT_SENDS: Final = 16
OFF: Final = "off"
ON: Final = "on"
NO_ROUND: Final = "none yet"
SITTING_OUT: Final = "sitting out"
NO_BUDGET: Final = "sitting out: no budget"
OVER_HUB_LIMIT: Final = "sitting out: the server's min-participants is above this hub's limit"
#: The learning modes that take no part in fleet rounds (hub/homeassistant/settings.py).
NO_ROUNDS_MODES: Final = ("local-only", "paused")


def off_by_mode(mode: str) -> str:
    """The Fleet learning state while the homeowner's ``mode`` allows no rounds."""
    return f"off: {mode} (set in Home Assistant)"


# Words of the recorded reasons: the ledger's over-budget refusal
# (services/personalization/ledger_refusals.py), and fleet/client_app.py's when the
# server asks more min-participants than this hub accepts.
_OVER_BUDGET = "privacy budget exceeded"
_MIN_PARTICIPANTS = "min-participants"


def _when(entry: audit_pb.LogEntry) -> str:
    """The record's time, plainly: ``2026-12-05 12:34:56 UTC``."""
    at = entry.decision.decided_at.ToDatetime(tzinfo=UTC)
    return at.strftime("%Y-%m-%d %H:%M:%S UTC")


def _round_of(entry: audit_pb.LogEntry) -> str:
    try:
        doc = json.loads(entry.decision.output_label)
    except ValueError:
        return ""
    return str(doc.get("round", "")) if isinstance(doc, dict) else ""


def _sit_out_state(entry: audit_pb.LogEntry) -> str:
    reason = entry.decision.policy.reason
    if _OVER_BUDGET in reason:
        return NO_BUDGET
    return OVER_HUB_LIMIT if _MIN_PARTICIPANTS in reason else SITTING_OUT


def round_document(
    sends: Sequence[audit_pb.LogEntry], sit_out: audit_pb.LogEntry | None
) -> dict[str, Any]:
    """The state and last round of an enabled hub, from its newest ``fleet.send`` records
    (newest first) and its newest ``fleet.sit_out`` record."""
    doc: dict[str, Any] = {"state": ON, "last_round_at": NO_ROUND, "round_epsilon": NO_ROUND}
    if sends:
        last = sends[0]
        round_id = _round_of(last)
        charged = sum(
            e.decision.output_values[0]
            for e in sends
            if _round_of(e) == round_id and e.decision.output_values
        )
        doc |= {
            "last_round_at": _when(last),
            "round_epsilon": round(charged, 4),
            "round": round_id,
            "model": last.decision.model.name,
            "model_version": last.decision.model.version,
        }
    if sit_out is not None and (not sends or sit_out.index > sends[0].index):
        doc |= {
            "state": _sit_out_state(sit_out),
            "sat_out_at": _when(sit_out),
            "why": sit_out.decision.policy.reason,
        }
    return doc


class FleetStatus:
    """What the fleet sensors show: from ``[fleet] enabled`` and the hub's audit log."""

    def __init__(self, *, enabled: bool, audit: audit_grpc.AuditServiceAsyncStub | None) -> None:
        self.enabled = enabled
        self.audit = audit
        # The last answer of the audit log (kept while it does not answer).
        self._round: dict[str, Any] = round_document([], None)

    async def _newest(self, action: str, count: int) -> list[audit_pb.LogEntry]:
        assert self.audit is not None
        resp = await self.audit.QueryDecisions(
            audit_pb.QueryDecisionsRequest(action=action, newest_first=True, page_size=count),
            timeout=3.0,
        )
        return list(resp.entries)

    async def document(
        self, budget: Mapping[str, Any] | None, learning_mode: str
    ) -> dict[str, Any]:
        """The state document; ``budget`` is the privacy budget's (δ, privacy unit), or
        None while the personalization service does not answer; ``learning_mode`` is the
        homeowner's (Home Assistant's "Learning mode")."""
        if not self.enabled:
            return {
                "state": OFF,
                "enabled": False,
                "last_round_at": OFF,
                "round_epsilon": OFF,
            }
        if self.audit is not None:
            try:
                sends = await self._newest(SEND_ACTION, RECENT_SENDS)
                sit_outs = await self._newest(SIT_OUT_ACTION, 1)
                self._round = round_document(sends, sit_outs[0] if sit_outs else None)
            except grpc.aio.AioRpcError as e:
                log.debug("fleet rounds: %s", peer_error(e, "audit", "QueryDecisions"))
        doc = {**self._round, "enabled": True}
        if learning_mode in NO_ROUNDS_MODES:
            doc |= {
                "state": off_by_mode(learning_mode),
                "why": f"the homeowner set learning to {learning_mode}: no fleet rounds",
            }
        if budget is not None:
            doc |= {"delta": budget.get("delta"), "privacy_unit": budget.get("privacy_unit")}
        return doc


# ---------------------------------------------------------------- components


def _fleet_sensor(hub_id: str, name: str, icon: str, field: str) -> dict[str, Any]:
    topic = state_topic(hub_id, FLEET_KEY)
    return {
        "p": "sensor",
        "name": name,
        "icon": icon,
        "state_topic": topic,
        "value_template": "{{ value_json." + field + " }}",
        "json_attributes_topic": topic,
    }


def components(hub_id: str) -> list[tuple[str, dict[str, Any]]]:
    """(key, component) of the three fleet sensors: plain text states (``off`` when fleet
    learning is off), so none has a unit or device class that would make ``off`` invalid."""
    learning = _fleet_sensor(hub_id, "Fleet learning", "mdi:account-group", "state")
    learning["json_attributes_template"] = (
        "{{ {'sat_out_at': value_json.get('sat_out_at'), 'why': value_json.get('why')} | tojson }}"
    )
    last = _fleet_sensor(hub_id, "Last fleet round", "mdi:clock-outline", "last_round_at")
    last["json_attributes_template"] = (
        "{{ {'round': value_json.get('round'), 'model': value_json.get('model'),"
        " 'model_version': value_json.get('model_version')} | tojson }}"
    )
    epsilon = _fleet_sensor(hub_id, "Fleet round ε", "mdi:shield-lock", "round_epsilon")
    epsilon["json_attributes_template"] = (
        "{{ {'round': value_json.get('round'), 'delta': value_json.get('delta'),"
        " 'privacy_unit': value_json.get('privacy_unit'),"
        " 'meaning': 'epsilon this hub charged its household privacy budget for its last"
        " fleet round (at delta, per privacy unit)'} | tojson }}"
    )
    return [("fleet_learning", learning), ("fleet_last_round", last), ("fleet_epsilon", epsilon)]
