"""The decision path with in-memory fakes: record before publish, retries are idempotent,
the action policy runs in reading order and remembers only acknowledged decisions."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from typing import Any

import grpc
import numpy as np
import pytest

from hub.pipeline import DecisionPipeline, Outgoing, Pending
from hub.policy import ActionPolicy, parse_action_rules
from roost.audit.v1 import audit_service_pb2 as audit_pb
from roost.common.v1 import common_pb2
from roost.inference.v1 import inference_service_pb2 as inf_pb


class RpcError(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=code.name)


def occupancy(x: float) -> inf_pb.Prediction:
    label = "occupied" if x >= 0.5 else "vacant"
    return inf_pb.Prediction(values=[1 - x, x], label=label, confidence=max(x, 1 - x))


class FakeInference:
    """Predicts P(occupied) = the first input feature."""

    def __init__(self, fail: Sequence[grpc.StatusCode] = ()) -> None:
        self.fail = list(fail)
        self.calls = 0

    async def PredictBatch(self, request: inf_pb.PredictBatchRequest, timeout: float) -> Any:
        self.calls += 1
        if self.fail:
            raise RpcError(self.fail.pop(0))
        return inf_pb.PredictBatchResponse(
            model=common_pb2.ModelRef(name=request.model_name, version="1.0.0", sha256="ab" * 32),
            predictions=[occupancy(t.float_values[0]) for t in request.inputs],
        )


class FakeAudit:
    """Fails the first ``failures`` appends (after optionally committing them)."""

    def __init__(self, failures: int = 0, commit_then_fail: bool = False) -> None:
        self.failures = failures
        self.commit_then_fail = commit_then_fail
        self.log: dict[str, int] = {}
        self.requests: list[list[str]] = []
        self.published_when_logged: list[bool] = []

    async def AppendDecisions(
        self, request: audit_pb.AppendDecisionsRequest, timeout: float
    ) -> Any:
        ids = [d.decision_id for d in request.decisions]
        self.requests.append(ids)
        if self.failures and not self.commit_then_fail:
            self.failures -= 1
            raise RpcError(grpc.StatusCode.UNAVAILABLE)
        results = []
        for d in request.decisions:
            already = d.decision_id in self.log
            self.log.setdefault(d.decision_id, len(self.log))
            results.append(
                audit_pb.AppendResult(
                    decision_id=d.decision_id, index=self.log[d.decision_id], already_logged=already
                )
            )
        if self.failures:
            self.failures -= 1
            raise RpcError(grpc.StatusCode.DEADLINE_EXCEEDED)  # committed, but the ack was lost
        return audit_pb.AppendDecisionsResponse(results=results, tree_size=len(self.log))


class SilentAudit(FakeAudit):
    """Takes appends and never answers (an audit service that hangs)."""

    def __init__(self) -> None:
        super().__init__()
        self.called = asyncio.Event()

    async def AppendDecisions(self, request: Any, timeout: float) -> Any:
        self.requests.append([d.decision_id for d in request.decisions])
        self.called.set()
        await asyncio.Event().wait()


class RefusingAudit(FakeAudit):
    """Refuses the appends whose number (0, 1, ...) is in ``refuse``; logs the others."""

    def __init__(self, refuse: set[int], code: grpc.StatusCode) -> None:
        super().__init__()
        self.refuse = refuse
        self.code = code

    async def AppendDecisions(self, request: Any, timeout: float) -> Any:
        if len(self.requests) in self.refuse:
            self.requests.append([d.decision_id for d in request.decisions])
            raise RpcError(self.code)
        return await super().AppendDecisions(request, timeout)


def pending(i: int, p_occupied: float = 0.0) -> Pending:
    features = np.arange(6, dtype=np.float32)
    features[0] = p_occupied
    return Pending(
        model="occupancy",
        area="office",
        features=features,
        feature_names=("a", "b", "c", "d", "e", "f"),
        reading_ts=1.0,
        trigger_id=f"r{i}",
        received_at=time.perf_counter(),
    )


def make(
    inference: FakeInference, audit: FakeAudit, published: list[Outgoing], **kw: Any
) -> DecisionPipeline:
    async def publish(out: Sequence[Outgoing]) -> None:
        for o in out:
            # Nothing may be published before the audit log holds it.
            audit.published_when_logged.append(
                any(o.payload.decode().find(i) >= 0 for i in audit.log)
            )
        published.extend(out)

    return DecisionPipeline(
        hub_id="h",
        inference=inference,  # type: ignore[arg-type]
        audit=audit,  # type: ignore[arg-type]
        publish=publish,
        predict_deadline=0.5,
        audit_deadline=0.5,
        max_pending=kw.get("max_pending", 100),
        max_batch=kw.get("max_batch", 10),
        on_overflow=kw.get("on_overflow", lambda: None),
        max_in_flight=kw.get("max_in_flight", 4),
        policy=kw.get("policy"),
    )


async def run_until_drained(pipeline: DecisionPipeline) -> None:
    task = asyncio.create_task(pipeline.run())
    assert await pipeline.drain(5.0)
    await asyncio.wait_for(task, 1)


async def test_records_then_publishes() -> None:
    published: list[Outgoing] = []
    audit = FakeAudit()
    p = make(FakeInference(), audit, published)
    for i in range(25):
        p.submit(pending(i))
    await run_until_drained(p)
    assert len(published) == 25
    assert all(audit.published_when_logged)
    assert [len(r) for r in audit.requests] == [10, 10, 5]
    assert published[0].topic == "roost/h/decisions/occupancy/office"


@pytest.mark.parametrize("commit_then_fail", [False, True])
async def test_audit_outage_is_retried_with_the_same_ids(commit_then_fail: bool) -> None:
    published: list[Outgoing] = []
    audit = FakeAudit(failures=3, commit_then_fail=commit_then_fail)
    p = make(FakeInference(), audit, published)
    for i in range(4):
        p.submit(pending(i))
    await run_until_drained(p)
    assert len(audit.requests) == 4
    assert all(r == audit.requests[0] for r in audit.requests)  # idempotent retries
    assert len(audit.log) == 4  # no duplicates
    assert len(published) == 4
    assert all(audit.published_when_logged)


async def test_refused_append_is_never_published() -> None:
    class Refusing(FakeAudit):
        async def AppendDecisions(self, request: Any, timeout: float) -> Any:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT)

    published: list[Outgoing] = []
    p = make(FakeInference(), Refusing(), published)
    p.submit(pending(0))
    await run_until_drained(p)
    assert published == []


async def test_predict_retries_transient_then_gives_up_on_invalid() -> None:
    published: list[Outgoing] = []
    inference = FakeInference(fail=[grpc.StatusCode.UNAVAILABLE])
    p = make(inference, FakeAudit(), published)
    p.submit(pending(0))
    await run_until_drained(p)
    assert inference.calls == 2
    assert len(published) == 1

    inference = FakeInference(fail=[grpc.StatusCode.INVALID_ARGUMENT])
    published.clear()
    p = make(inference, FakeAudit(), published)
    p.submit(pending(0))
    await run_until_drained(p)
    assert inference.calls == 1
    assert published == []


async def test_overflow_drops_oldest_and_counts() -> None:
    dropped: list[int] = []
    published: list[Outgoing] = []
    p = make(
        FakeInference(),
        FakeAudit(),
        published,
        max_pending=3,
        on_overflow=lambda: dropped.append(1),
    )
    for i in range(5):
        p.submit(pending(i))
    await run_until_drained(p)
    assert len(dropped) == 2
    assert [o.payload.decode().count('"trigger_id":"r') for o in published] == [1, 1, 1]
    assert '"trigger_id":"r4"' in published[-1].payload.decode()


async def test_drain_times_out_when_audit_is_down() -> None:
    published: list[Outgoing] = []
    audit = SilentAudit()
    p = make(FakeInference(), audit, published)
    p.submit(pending(0))
    task = asyncio.create_task(p.run())
    await audit.called.wait()
    assert not await p.drain(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert published == []


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.FAILED_PRECONDITION,
    ],
)
async def test_refusal_is_given_up_with_an_error(
    code: grpc.StatusCode, caplog: pytest.LogCaptureFixture
) -> None:
    published: list[Outgoing] = []
    audit = RefusingAudit({0}, code)
    p = make(FakeInference(), audit, published)
    p.submit(pending(0))
    with caplog.at_level(logging.ERROR, logger="hub.pipeline"):
        await run_until_drained(p)
    assert len(audit.requests) == 1  # a refusal is not retried
    assert published == []
    assert [r.getMessage() for r in caplog.records] == [
        f"audit refused 1 decisions: audit service: AppendDecisions failed ({code.name}): "
        f"{code.name}"
    ]


async def test_predict_retries_any_retryable_error() -> None:
    published: list[Outgoing] = []
    inference = FakeInference(fail=[grpc.StatusCode.INTERNAL, grpc.StatusCode.DEADLINE_EXCEEDED])
    p = make(inference, FakeAudit(), published)
    p.submit(pending(0))
    await run_until_drained(p)
    assert inference.calls == 3
    assert len(published) == 1

    inference = FakeInference(fail=[grpc.StatusCode.UNAVAILABLE] * 3)  # bounded: 3 attempts
    published.clear()
    p = make(inference, FakeAudit(), published)
    p.submit(pending(0))
    await run_until_drained(p)
    assert inference.calls == 3
    assert published == []


# --- The action policy: reading order, acknowledged decisions only -----------------

RULES = parse_action_rules(
    [
        "occupancy.office:vacant=light.turn_off:light.office",
        "occupancy.office:occupied=light.turn_on:light.office",
    ]
)
VACANT, OCCUPIED = 0.1, 0.9


def actions(published: Sequence[Outgoing]) -> dict[str, str]:
    """trigger id -> the action recorded and published with its decision."""
    docs = [json.loads(o.payload) for o in published]
    return {d["trigger_id"]: d["action"] for d in docs}


class OutOfOrderInference(FakeInference):
    """The first PredictBatch call completes only after the second one did."""

    def __init__(self) -> None:
        super().__init__()
        self.second_done = asyncio.Event()

    async def PredictBatch(self, request: inf_pb.PredictBatchRequest, timeout: float) -> Any:
        self.calls += 1
        call = self.calls
        if call == 1:
            await self.second_done.wait()
        response = await super().PredictBatch(request, timeout)
        if call == 2:
            self.second_done.set()
        return response


async def test_policy_follows_reading_order_when_predictions_complete_out_of_order() -> None:
    policy = ActionPolicy(RULES)
    published: list[Outgoing] = []
    inference = OutOfOrderInference()
    p = make(inference, FakeAudit(), published, max_batch=1, policy=policy)
    p.submit(pending(0, VACANT))  # batch 1: its prediction completes last
    p.submit(pending(1, OCCUPIED))  # batch 2
    await run_until_drained(p)
    assert inference.second_done.is_set()
    assert actions(published) == {"r0": "light.turn_off", "r1": "light.turn_on"}
    # The later reading's label is the one remembered: still occupied, nothing fires.
    p.submit(pending(2, OCCUPIED))
    await run_until_drained(p)
    assert actions(published)["r2"] == "publish"


async def test_refused_decision_does_not_change_the_policy() -> None:
    policy = ActionPolicy(RULES)
    published: list[Outgoing] = []
    audit = RefusingAudit({0}, grpc.StatusCode.INVALID_ARGUMENT)
    p = make(FakeInference(), audit, published, policy=policy)
    p.submit(pending(0, VACANT))  # refused: never recorded, so never remembered
    await run_until_drained(p)
    assert published == []
    p.submit(pending(1, VACANT))  # still a change from nothing: fires
    await run_until_drained(p)
    assert actions(published) == {"r1": "light.turn_off"}


async def test_refused_change_does_not_make_the_next_decision_fire() -> None:
    policy = ActionPolicy(RULES)
    published: list[Outgoing] = []
    audit = RefusingAudit({1}, grpc.StatusCode.INVALID_ARGUMENT)
    p = make(FakeInference(), audit, published, policy=policy)
    for i, x in enumerate((VACANT, OCCUPIED, VACANT)):  # the change to occupied is refused
        p.submit(pending(i, x))
        await run_until_drained(p)
    # Vacant was the last recorded label: vacant again is unchanged, nothing fires.
    assert actions(published) == {"r0": "light.turn_off", "r2": "publish"}


async def test_unacknowledged_decision_does_not_change_the_policy() -> None:
    policy = ActionPolicy(RULES)
    audit = SilentAudit()
    p = make(FakeInference(), audit, [], policy=policy)
    p.submit(pending(0, VACANT))
    task = asyncio.create_task(p.run())
    await audit.called.wait()
    task.cancel()  # stopped (drain deadline passed) before the audit answered
    with pytest.raises(asyncio.CancelledError):
        await task
    published: list[Outgoing] = []
    p = make(FakeInference(), FakeAudit(), published, policy=policy)
    p.submit(pending(1, VACANT))
    await run_until_drained(p)
    assert actions(published) == {"r1": "light.turn_off"}


async def test_later_batch_waits_for_an_earlier_one_being_retried() -> None:
    policy = ActionPolicy(RULES)
    published: list[Outgoing] = []
    audit = FakeAudit(failures=2)  # the first batch's append is retried twice
    p = make(FakeInference(), audit, published, max_batch=1, policy=policy)
    for i, x in enumerate((VACANT, VACANT, OCCUPIED, OCCUPIED)):
        p.submit(pending(i, x))
    await run_until_drained(p)
    assert actions(published) == {
        "r0": "light.turn_off",
        "r1": "publish",
        "r2": "light.turn_on",
        "r3": "publish",
    }
    assert [json.loads(o.payload)["trigger_id"] for o in published] == ["r0", "r1", "r2", "r3"]


async def test_one_batch_sees_its_own_earlier_readings() -> None:
    policy = ActionPolicy(RULES)
    published: list[Outgoing] = []
    p = make(FakeInference(), FakeAudit(), published, policy=policy)
    for i, x in enumerate((VACANT, VACANT, OCCUPIED)):
        p.submit(pending(i, x))
    await run_until_drained(p)
    assert actions(published) == {"r0": "light.turn_off", "r1": "publish", "r2": "light.turn_on"}
    assert policy.last_label("occupancy", "office") == "occupied"


async def test_a_failed_batch_neither_changes_the_policy_nor_blocks_the_next() -> None:
    class ShortAudit(FakeAudit):
        """Acknowledges no decision of the first append (a broken peer)."""

        async def AppendDecisions(self, request: Any, timeout: float) -> Any:
            response = await super().AppendDecisions(request, timeout)
            if len(self.requests) == 1:
                del response.results[:]
            return response

    policy = ActionPolicy(RULES)
    published: list[Outgoing] = []
    p = make(FakeInference(), ShortAudit(), published, max_batch=1, policy=policy)
    p.submit(pending(0, VACANT))  # its batch fails: never remembered
    p.submit(pending(1, VACANT))
    await run_until_drained(p)
    assert actions(published) == {"r1": "light.turn_off"}  # still a change: fires
