"""The published decision: one compact JSON document per acknowledged decision.

Its fields are documented in ``docs/topics.md``; inbound reading validation is
:mod:`hub.payloads`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC

from roost.audit.v1 import audit_service_pb2 as audit_pb
from roost.common.v1 import common_pb2


def decision_payload(
    d: audit_pb.Decision, *, index: int, area: str, reading_ts: float, trigger_id: str
) -> bytes:
    """The JSON of decision ``d``, acknowledged at audit ``index``."""
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
        "why": why_text(d.explanation),
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


def why_text(explanation: Sequence[common_pb2.FeatureAttribution]) -> str:
    """A plain-language reason from the top attributions, e.g. "mostly light (raised
    it by 0.41), then co2 (raised it by 0.12)"; empty without attributions."""
    parts = []
    for a in explanation:
        if abs(a.attribution) < 1e-6:
            continue
        verb = "raised" if a.attribution > 0 else "lowered"
        parts.append(f"{a.feature.replace('_', ' ')} ({verb} it by {abs(a.attribution):.2g})")
    if not parts:
        return ""
    if len(parts) == 1:
        return f"mostly {parts[0]}"
    return f"mostly {parts[0]}, then " + ", ".join(parts[1:])
