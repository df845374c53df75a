"""The published decision JSON: fields and rounding (the "why" in words: test_why)."""

from __future__ import annotations

import json

from google.protobuf.timestamp_pb2 import Timestamp

from hub.payload import decision_payload
from roost.audit.v1 import audit_service_pb2 as audit_pb
from roost.common.v1 import common_pb2


def attribution(feature: str, value: float) -> common_pb2.FeatureAttribution:
    return common_pb2.FeatureAttribution(feature=feature, attribution=value)


def test_decision_payload_fields() -> None:
    d = audit_pb.Decision(
        decision_id="0190abcd",
        decided_at=Timestamp(seconds=1_764_000_000, nanos=500_000_000),
        entity_id="occupancy.office",
        model=common_pb2.ModelRef(name="occupancy", version="1.0.0", sha256="ab" * 32),
        output_values=[0.1234567891, 0.8765432109],
        output_label="occupied",
        confidence=0.8765432109,
        explanation=[attribution("light", 0.41234567)],
        policy=audit_pb.Policy(policy_id="report-only", verdict=audit_pb.POLICY_VERDICT_ALLOWED),
        action="publish",
    )
    payload = decision_payload(
        d,
        index=17,
        area="office",
        reading_ts=1.5,
        trigger_id="r-1",
        why="Light was the main reason.",
    )
    assert payload.startswith(b'{"decision_id":"0190abcd","audit_index":17,"entity_id"')  # compact
    assert json.loads(payload) == {
        "decision_id": "0190abcd",
        "audit_index": 17,
        "entity_id": "occupancy.office",
        "area": "office",
        "model": {"name": "occupancy", "version": "1.0.0", "sha256": "ab" * 32},
        "label": "occupied",
        "confidence": 0.876543,
        "values": [0.123457, 0.876543],
        "decided_at": "2025-11-24T16:00:00.500000+00:00",
        "reading_ts": 1.5,
        "trigger_id": "r-1",
        "why": "Light was the main reason.",
        "action": "publish",
        "policy": {"id": "report-only", "verdict": "allowed"},
        "explanation": [{"feature": "light", "attribution": 0.412346}],
    }
