"""Rollout steps in the audit log: the decision recorded, retries of an outage until the
deadline, and the audit's refusals kept apart from outages (``services.kit.peers``)."""

from __future__ import annotations

import grpc
import pytest

from roost.audit.v1 import audit_service_pb2 as audit_pb
from roost.common.v1 import common_pb2
from services.kit.errors import FailedPrecondition, InvalidArgument, Unavailable
from services.update.trail import POLICY_ID, Trail
from tests.support.update_fakes import FakeAudit

MODEL = common_pb2.ModelRef(name="occupancy", version="1.1.0", sha256="ab" * 32)


async def test_a_step_is_a_decision_about_the_model() -> None:
    audit = FakeAudit()
    trail = Trail(audit, "hub-7", 5.0)  # type: ignore[arg-type]
    assert await trail.record(MODEL, "update.shadow", "1.1.0 in shadow", "by hand") == 0
    assert await trail.record(MODEL, "update.rollback", "withdrawn", "gate", automatic=True) == 1
    first, second = audit.decisions
    assert (first.hub_id, first.entity_id, first.action) == (
        "hub-7",
        "roost.model.occupancy",
        "update.shadow",
    )
    assert first.model == MODEL
    assert first.output_label == "1.1.0 in shadow"
    assert (first.policy.policy_id, first.policy.reason) == (POLICY_ID, "by hand")
    assert first.policy.verdict == audit_pb.POLICY_VERDICT_ALLOWED
    assert first.actor == audit_pb.ACTOR_USER_OVERRIDE
    assert second.actor == audit_pb.ACTOR_AUTOMATIC
    assert first.decision_id != second.decision_id


async def test_an_outage_is_retried_with_the_same_decision() -> None:
    audit = FakeAudit([grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED])
    trail = Trail(audit, "hub", 30.0)  # type: ignore[arg-type]
    assert await trail.record(MODEL, "update.promote", "active", "by hand") == 0
    assert audit.calls == 3
    assert len(audit.decisions) == 1


async def test_an_outage_past_the_deadline_is_unavailable() -> None:
    audit = FakeAudit([grpc.StatusCode.UNAVAILABLE])
    trail = Trail(audit, "hub", 0.0)  # type: ignore[arg-type]
    with pytest.raises(Unavailable) as e:
        await trail.record(MODEL, "update.promote", "active", "by hand")
    assert str(e.value) == (
        "audit service: AppendDecisions failed (UNAVAILABLE); the step update.promote was"
        " not taken because it could not be recorded first — retry"
    )
    assert audit.decisions == []


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgument),
        (grpc.StatusCode.FAILED_PRECONDITION, FailedPrecondition),
    ],
)
async def test_a_refusal_keeps_its_meaning_and_is_not_retried(
    code: grpc.StatusCode, error: type[Exception]
) -> None:
    audit = FakeAudit([code, code, code])
    trail = Trail(audit, "hub", 30.0)  # type: ignore[arg-type]
    with pytest.raises(error) as e:
        await trail.record(MODEL, "update.stage", "staged", "by hand")
    assert not isinstance(e.value, Unavailable)
    assert audit.calls == 1
    message = str(e.value)
    assert message.startswith(f"audit service: AppendDecisions failed ({code.name})")
    assert "retry" not in message
    assert "says no" not in message  # the peer's details are not echoed
