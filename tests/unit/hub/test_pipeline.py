"""The decision path with in-memory fakes: record before publish, retries are idempotent."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from typing import Any

import grpc
import numpy as np
import pytest

from hub.decisions import DecisionPipeline, Outgoing, Pending, uuid7
from roost.audit.v1 import audit_service_pb2 as audit_pb
from roost.common.v1 import common_pb2
from roost.inference.v1 import inference_service_pb2 as inf_pb


class RpcError(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=code.name)


class FakeInference:
    def __init__(self, fail: Sequence[grpc.StatusCode] = ()) -> None:
        self.fail = list(fail)
        self.calls = 0

    async def PredictBatch(self, request: inf_pb.PredictBatchRequest, timeout: float) -> Any:
        self.calls += 1
        if self.fail:
            raise RpcError(self.fail.pop(0))
        return inf_pb.PredictBatchResponse(
            model=common_pb2.ModelRef(name=request.model_name, version="1.0.0", sha256="ab" * 32),
            predictions=[
                inf_pb.Prediction(values=[0.2, 0.8], label="occupied", confidence=0.8)
                for _ in request.inputs
            ],
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


def pending(i: int) -> Pending:
    return Pending(
        model="occupancy",
        area="office",
        features=np.arange(6, dtype=np.float32),
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
    p = make(FakeInference(), FakeAudit(failures=10_000), published)
    p.submit(pending(0))
    task = asyncio.create_task(p.run())
    assert not await p.drain(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert published == []


def test_decision_ids_are_time_ordered_uuid7() -> None:
    first = uuid7()
    time.sleep(0.002)
    later = [uuid7() for _ in range(500)]
    assert len(set(later)) == 500
    assert all(first < x for x in later)  # a later millisecond sorts after
    parsed = uuid.UUID(first)
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
