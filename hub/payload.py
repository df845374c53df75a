"""The published decision: one compact JSON document per acknowledged decision.

Its fields are documented in ``docs/topics.md``; inbound reading validation is
:mod:`hub.payloads`.
"""

from __future__ import annotations

import json
from datetime import UTC

from roost.audit.v1 import audit_service_pb2 as audit_pb


def decision_payload(
    d: audit_pb.Decision, *, index: int, area: str, reading_ts: float, trigger_id: str, why: str
) -> bytes:
    """The JSON of decision ``d``, acknowledged at audit ``index``; ``why`` in words
    (``hub.why``)."""
    doc = {
        "decision_id": d.decision_id,
        "audit_index": index,
        "entity_id": d.entity_id,
        "area": area,
        "model": {"name": d.model.name, "version": d.model.version, "sha256": d.model.sha256},
        "label": d.output_label,
        "confidence": round(d.confidence, 6),
        "values": [round(v, 6) for v in d.output_values],
        "decided_at": d.decided_at.ToDatetime(UTC).isoformat(),
        "reading_ts": reading_ts,
        "trigger_id": trigger_id,
        "why": why,
        "action": d.action,
        "policy": {
            "id": d.policy.policy_id,
            "verdict": audit_pb.PolicyVerdict.Name(d.policy.verdict)
            .removeprefix("POLICY_VERDICT_")
            .lower(),
        },
        "explanation": [
            {"feature": a.feature, "attribution": round(a.attribution, 6)} for a in d.explanation
        ],
    }
    return json.dumps(doc, separators=(",", ":")).encode()
