"""The log's own records of erasing stored inputs (right to erasure, retention).

Erasing a decision's inputs never touches its leaf: the record (and so every proof)
stays as it was, only the side store's bytes go. Each erasure is itself appended to
the log as a decision with ``actor = ACTOR_ADMIN``, so an auditor sees who erased
what, when and why:

* a **redaction** (``action = "audit.redact_inputs"``) names the redacted decision in
  ``output_label`` and repeats its entity, model and ``inputs_digest``;
* a **retention** run (``action = "audit.prune_inputs"``) states how many inputs it
  pruned and the cut-off in ``output_label``/``output_values``.

The side-store row of every erased input points at the entry that erased it.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from roost.audit.v1 import audit_service_pb2 as pb

REDACT_ACTION = "audit.redact_inputs"
PRUNE_ACTION = "audit.prune_inputs"
REDACTION_POLICY = "audit.erasure"
RETENTION_POLICY = "audit.retention"
# Entity of log-maintenance records that concern no single household entity.
LOG_ENTITY = "roost.audit"
MAX_REASON_CHARS = 500


def redaction_id(target_decision_id: str) -> str:
    """Deterministic id of the redaction of ``target_decision_id`` (so retries are no-ops)."""
    return "redaction-" + hashlib.sha256(target_decision_id.encode()).hexdigest()[:32]


def redaction_decision(target: pb.Decision, reason: str, now_us: int) -> pb.Decision:
    """The log entry recording that ``target``'s stored inputs were deleted."""
    d = pb.Decision(
        decision_id=redaction_id(target.decision_id),
        hub_id=target.hub_id,
        entity_id=target.entity_id,
        inputs_digest=target.inputs_digest,
        output_label=target.decision_id,
        action=REDACT_ACTION,
        actor=pb.ACTOR_ADMIN,
        policy=pb.Policy(
            policy_id=REDACTION_POLICY, verdict=pb.POLICY_VERDICT_ALLOWED, reason=reason
        ),
    )
    d.model.CopyFrom(target.model)
    d.decided_at.FromMicroseconds(now_us)
    return d


def retention_decision(
    hub_id: str, pruned: int, cutoff_us: int, reason: str, now_us: int
) -> pb.Decision:
    """The log entry recording one retention run that pruned ``pruned`` stored inputs."""
    cutoff = datetime.fromtimestamp(cutoff_us / 1e6, UTC).isoformat(timespec="seconds")
    d = pb.Decision(
        decision_id=f"retention-{now_us}",
        hub_id=hub_id,
        entity_id=LOG_ENTITY,
        output_values=[float(pruned)],
        output_label=f"pruned the stored inputs of {pruned} decisions made before {cutoff}",
        action=PRUNE_ACTION,
        actor=pb.ACTOR_ADMIN,
        policy=pb.Policy(
            policy_id=RETENTION_POLICY, verdict=pb.POLICY_VERDICT_ALLOWED, reason=reason
        ),
    )
    d.decided_at.FromMicroseconds(now_us)
    return d


def check_reason(reason: str) -> None:
    """Raises ValueError unless ``reason`` is a short, non-empty, single-line text."""
    if not reason.strip():
        raise ValueError("reason: required (it is logged with the redaction)")
    if len(reason) > MAX_REASON_CHARS:
        raise ValueError(f"reason: at most {MAX_REASON_CHARS} characters")
    if any(ch in reason for ch in "\r\n"):
        raise ValueError("reason: a single line")
