"""Every byte a hub sends to the fleet is on the record: the ``fleet.send`` audit entry.

:func:`egress_audit_mod` is the ClientApp's outermost mod, so it sees each reply exactly
as Flower will send it (after ``secaggplus_mod`` masked it). For each reply to a TRAIN
message (every SecAgg+ stage of a round) it appends, **before returning the reply**, an
audit record ``fleet.send``: run and round, SecAgg+ stage, the SuperLink, the hub's model
version, the SHA-256 and size of the reply's content (Flower's serialized ``RecordDict``:
the bytes of the reply besides the message metadata), the mechanism and the epsilon the
hub's ledger charged for the round. If the audit log does not take the record, the mod
raises and nothing is sent. The record of the masked-vector reply also names the hub's
*contribution*, the clipped and noised delta SecAgg+ masked (SHA-256 of its float32
little-endian bytes, L2 norm), and keeps the vector itself as the record's redactable
inputs, in the hub's own log: what the server could only ever see inside the sum. A hub
that sits a round out (no budget, learning mode) records ``fleet.sit_out`` and sends only
an error without the reason.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Final

import numpy as np
from flwr.app import Context, Message
from flwr.common import ConfigRecord, MessageType
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.common.serde import recorddict_to_proto

from fleet.hub_node import HubNode
from roost.audit.v1 import audit_service_pb2 as audit_pb
from roost.audit.v1 import audit_service_pb2_grpc as audit_grpc
from roost.common.v1 import common_pb2
from services.kit.auth import Role
from services.kit.tensors import array_to_tensor

logger = logging.getLogger("roost.fleet.client")

SEND: Final = "fleet.send"
SIT_OUT: Final = "fleet.sit_out"
#: Where the ClientApp leaves the round's charge for this mod (the node's context state).
ROUND_STATE: Final = "roost.fleet.round"
#: The ROUND_STATE key of the hub's unmasked contribution (float32 little-endian bytes).
CONTRIBUTION: Final = "contribution"
POLICY_ID: Final = "fleet.egress"
KEYS_ONLY: Final = "secagg+ protocol (keys, shares; no model data)"
AUDIT_TIMEOUT: Final = 15.0


class SitOut(RuntimeError):
    """The hub sits this round out (its ledger refused the round's charge)."""

    def __init__(self, round_id: str, reason: str) -> None:
        # Flower sends str(exception) to the server: it names no budget or reason.
        super().__init__("the hub sits this round out")
        self.round_id = round_id
        self.reason = reason


@dataclass(frozen=True)
class Egress:
    """One reply that left the hub (the audit record's ``output_label``, as JSON)."""

    round: str
    stage: str
    server: str
    model_version: str
    sha256: str
    size: int
    mechanism: str
    epsilon: float
    # The masked-vector reply only: the contribution inside it, before masking.
    contribution_sha256: str = ""
    contribution_norm: float = 0.0

    def decision(self, hub_id: str, model: str, node_id: int) -> audit_pb.Decision:
        d = audit_pb.Decision(
            decision_id=f"{SEND}.{self.round}.{self.stage}.{node_id}"[:128],
            hub_id=hub_id,
            entity_id=f"roost.fleet.{model}",
            model=common_pb2.ModelRef(
                name=model, version=self.model_version or "-", sha256=self.sha256
            ),
            output_label=json.dumps(asdict(self), separators=(",", ":")),
            output_values=[self.epsilon, float(self.size)],
            action=SEND,
            actor=audit_pb.ACTOR_AUTOMATIC,
            policy=audit_pb.Policy(
                policy_id=POLICY_ID,
                verdict=audit_pb.POLICY_VERDICT_ALLOWED,
                reason=(
                    f"sent {self.size} bytes (sha256 {self.sha256[:16]}...) to {self.server}:"
                    f" round {self.round}, SecAgg+ {self.stage}, {self.mechanism},"
                    f" epsilon {self.epsilon:.4g} charged"
                ),
            ),
        )
        d.decided_at.FromDatetime(datetime.now(UTC))
        return d


def _stage(msg: Message) -> str:
    records = msg.content.config_records
    if RECORD_KEY_CONFIGS in records and Key.STAGE in records[RECORD_KEY_CONFIGS]:
        return str(records[RECORD_KEY_CONFIGS][Key.STAGE])
    return "plain"


def append_records(node: HubNode, decisions: list[audit_pb.Decision]) -> None:
    """Append to the hub's audit log; raises (so nothing is sent) when it refuses."""
    with node.channel(Role.AUDIT) as ch:
        audit_grpc.AuditServiceStub(ch).AppendDecisions(
            audit_pb.AppendDecisionsRequest(decisions=decisions), timeout=AUDIT_TIMEOUT
        )


def _round_charge(ctxt: Context, round_id: str) -> dict[str, Any]:
    rec = ctxt.state.config_records.get(ROUND_STATE)
    if rec is None or rec.get("round_id") != round_id:
        return {}
    return dict(rec)


def egress_audit_mod(msg: Message, ctxt: Context, call_next: Any) -> Message:
    if msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, ctxt)  # type: ignore[no-any-return]
    node = HubNode.from_node_config(ctxt.node_config)
    stage = _stage(msg)  # read first: secaggplus_mod pops it from the content
    round_id = f"{msg.metadata.run_id}-{msg.metadata.group_id}"
    model = ctxt.state.config_records.get(ROUND_STATE, ConfigRecord()).get("model", "occupancy")
    try:
        reply: Message = call_next(msg, ctxt)
    except SitOut as e:
        logger.warning("hub %s sits fleet round %s out: %s", node.hub_id, e.round_id, e.reason)
        d = Egress(round_id, stage, node.superlink, "", "", 0, "none (sat out)", 0.0).decision(
            node.hub_id, str(model), msg.metadata.dst_node_id
        )
        d.action = SIT_OUT
        d.decision_id = d.decision_id.replace(SEND, SIT_OUT, 1)
        d.policy.reason = f"sat round {e.round_id} out, nothing sent: {e.reason}"[:512]
        d.model.sha256 = "-"
        append_records(node, [d])
        raise
    content = b"" if reply.has_error() else recorddict_to_proto(reply.content).SerializeToString()
    charge = _round_charge(ctxt, round_id)
    # The one reply of a round that carries model data: the masked vector (or, without
    # SecAgg+, the plain fit reply). The others carry keys, shares and node ids.
    data_stage = bool(charge) and stage in (Stage.COLLECT_MASKED_VECTORS, "plain")
    egress = Egress(
        round=round_id,
        stage=stage,
        server=node.superlink,
        model_version=str(charge.get("model_version", "")),
        sha256=hashlib.sha256(content).hexdigest(),
        size=len(content),
        mechanism=str(charge["mechanism"]) if data_stage else KEYS_ONLY,
        epsilon=float(charge["round_epsilon"]) if data_stage else 0.0,
    )
    d = egress.decision(node.hub_id, str(charge.get("model", model)), msg.metadata.dst_node_id)
    if data_stage and CONTRIBUTION in charge:
        _add_contribution(d, egress, bytes(charge[CONTRIBUTION]))
    append_records(node, [d])
    return reply


def _add_contribution(d: audit_pb.Decision, egress: Egress, raw: bytes) -> None:
    """Name the unmasked contribution in the record (digest, norm) and keep the vector
    as the record's inputs (the hub's own, redactable side store)."""
    vector = np.frombuffer(raw, "<f4").astype(np.float32)
    named = dataclasses.replace(
        egress,
        contribution_sha256=hashlib.sha256(raw).hexdigest(),
        contribution_norm=round(float(np.linalg.norm(vector)), 6),
    )
    d.output_label = json.dumps(asdict(named), separators=(",", ":"))
    d.inputs.CopyFrom(
        audit_pb.DecisionInputs(feature_names=[CONTRIBUTION], tensor=array_to_tensor(vector))
    )
