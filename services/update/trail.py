"""Every rollout step is recorded in the audit log: before it takes effect, except a
promotion, recorded right after the flip (see ``services.update.rollout``).

A step is a decision about a model (``entity_id = roost.model.<name>``) with the
version it concerns as ``model``, the step as ``action`` (``update.stage``,
``update.shadow``, ``update.ab``, ``update.promote``, ``update.rollback``, and
``update.failed`` for a recorded step that did not take effect), who caused
it as ``actor`` (a person through the CLI or Home Assistant: ``user_override``; the
health gate: ``automatic``) and why as the policy reason.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import grpc

from roost.audit.v1 import audit_service_pb2 as audit_pb
from roost.audit.v1 import audit_service_pb2_grpc as audit_grpc
from roost.common.v1 import common_pb2
from services.kit.errors import RoostError
from services.kit.peers import is_retryable, peer_error

logger = logging.getLogger(__name__)

POLICY_ID = "update.rollout"
# The audit log refuses longer texts (docs/audit.md, "Limits"): cut, never lose the step.
_MAX_SUMMARY_CHARS = 256
_MAX_REASON_CHARS = 500


def step_decision(
    hub_id: str,
    model: common_pb2.ModelRef,
    action: str,
    summary: str,
    reason: str,
    *,
    automatic: bool,
) -> audit_pb.Decision:
    d = audit_pb.Decision(
        decision_id=uuid.uuid4().hex,
        hub_id=hub_id,
        entity_id=f"roost.model.{model.name}",
        model=model,
        output_label=summary[:_MAX_SUMMARY_CHARS],
        action=action,
        actor=audit_pb.ACTOR_AUTOMATIC if automatic else audit_pb.ACTOR_USER_OVERRIDE,
        policy=audit_pb.Policy(
            policy_id=POLICY_ID,
            verdict=audit_pb.POLICY_VERDICT_ALLOWED,
            reason=reason[:_MAX_REASON_CHARS],
        ),
    )
    d.decided_at.GetCurrentTime()
    return d


class Trail:
    """Appends rollout steps to the audit log (retrying the same id until acknowledged)."""

    def __init__(
        self, audit: audit_grpc.AuditServiceAsyncStub, hub_id: str, deadline_seconds: float
    ) -> None:
        self._audit = audit
        self._hub_id = hub_id
        self._deadline = deadline_seconds

    async def record(
        self,
        model: common_pb2.ModelRef,
        action: str,
        summary: str,
        reason: str,
        *,
        automatic: bool = False,
    ) -> int:
        """Appends one step; returns its log index. Unavailable if the audit log does
        not acknowledge it within the deadline, its own error if it refuses the step
        (the step must then not happen either way)."""
        d = step_decision(self._hub_id, model, action, summary, reason, automatic=automatic)
        request = audit_pb.AppendDecisionsRequest(decisions=[d])
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self._deadline
        delay = 0.05
        while True:
            try:
                response = await self._audit.AppendDecisions(
                    request, timeout=max(0.1, give_up - loop.time())
                )
                return int(response.results[0].index)
            except grpc.aio.AioRpcError as e:
                if is_retryable(e) and loop.time() + delay < give_up:
                    await asyncio.sleep(delay)
                    delay = min(2 * delay, 0.5)
                    continue
                logger.error("audit did not record %s of %s: %s", action, model.name, e)
                raise not_recorded(e, action) from None


def not_recorded(e: grpc.RpcError, action: str) -> RoostError:
    """The error of a step the audit log did not record: the audit's refusal keeps its
    meaning (a permanent error, not retried); an outage is ``Unavailable`` (retry)."""
    error = peer_error(e, "audit", "AppendDecisions")
    advice = " — retry" if is_retryable(e) else ""
    return type(error)(
        f"{error}; the step {action} was not taken because it could not be recorded first" + advice
    )
