"""The decision path with in-memory fakes: record before publish, retries are idempotent,
the action policy runs in reading order and remembers only acknowledged decisions, an
outage is waited out (bounded backlog), a poisoned reading is isolated, a redelivered
reading is decided once, and the health object says why a model is not deciding."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from hub import predict
from hub.health import DecisionHealth, ModelState
from hub.pipeline import DecisionPipeline, Outgoing, Pending
from hub.policy import ActionPolicy, parse_action_rules
from roost.audit.v1 import audit_service_pb2 as audit_pb
from roost.common.v1 import common_pb2
from roost.inference.v1 import inference_service_pb2 as inf_pb
from tests.support.waiting import wait_until_async


class RpcError(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=code.name)


def occupancy(x: float) -> inf_pb.Prediction:
    label = "occupied" if x >= 0.5 else "vacant"
    return inf_pb.Prediction(values=[1 - x, x], label=label, confidence=max(x, 1 - x))


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries a thousand times faster (the backoff is not what these tests are about)."""
    monkeypatch.setattr(predict, "RETRY_FIRST_DELAY", 0.0005)
    monkeypatch.setattr(predict, "RETRY_MAX_DELAY", 0.0005)
    monkeypatch.setattr("hub.pipeline.RETRY_FIRST_DELAY", 0.0005)
    monkeypatch.setattr("hub.pipeline.RETRY_MAX_DELAY", 0.0005)


class FakeInference:
    """Predicts P(occupied) = the first input feature."""

    def __init__(self, fail: Sequence[grpc.StatusCode] = ()) -> None:
        self.fail = list(fail)
        self.calls = 0
        self.wait_for_ready: list[bool | None] = []

    async def PredictBatch(
        self,
        request: inf_pb.PredictBatchRequest,
        timeout: float,
        wait_for_ready: bool | None = None,
    ) -> Any:
        self.calls += 1
        self.wait_for_ready.append(wait_for_ready)
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
        self.wait_for_ready: list[bool | None] = []

    async def AppendDecisions(
        self,
        request: audit_pb.AppendDecisionsRequest,
        timeout: float,
        wait_for_ready: bool | None = None,
    ) -> Any:
        self.wait_for_ready.append(wait_for_ready)
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

    async def AppendDecisions(self, request: Any, timeout: float, **kw: Any) -> Any:
        self.requests.append([d.decision_id for d in request.decisions])
        self.called.set()
        await asyncio.Event().wait()


class RefusingAudit(FakeAudit):
    """Refuses the appends whose number (0, 1, ...) is in ``refuse``; logs the others."""

    def __init__(self, refuse: set[int], code: grpc.StatusCode) -> None:
        super().__init__()
        self.refuse = refuse
        self.code = code

    async def AppendDecisions(self, request: Any, timeout: float, **kw: Any) -> Any:
        if len(self.requests) in self.refuse:
            self.requests.append([d.decision_id for d in request.decisions])
            raise RpcError(self.code)
        return await super().AppendDecisions(request, timeout, **kw)


def pending(
    i: int, p_occupied: float = 0.0, *, area: str = "office", trigger: str | None = None
) -> Pending:
    features = np.arange(6, dtype=np.float32)
    features[0] = p_occupied
    return Pending(
        model="occupancy",
        area=area,
        features=features,
        feature_names=("a", "b", "c", "d", "e", "f"),
        reading_ts=1.0,
        trigger_id=f"r{i}" if trigger is None else trigger,
        received_at=time.perf_counter(),
    )


def triggers(published: Sequence[Outgoing]) -> list[str]:
    return [json.loads(o.payload)["trigger_id"] for o in published]


def decisions_counted(outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "roost_hub_decisions_total", {"model": "occupancy", "outcome": outcome}
    )
    return value or 0.0


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
        **{k: v for k, v in kw.items() if k in ("health", "recent_ids")},
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
        async def AppendDecisions(self, request: Any, timeout: float, **kw: Any) -> Any:
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

    inference = FakeInference(fail=[grpc.StatusCode.INTERNAL] * 3)  # bounded: 3 attempts
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

    async def PredictBatch(
        self, request: inf_pb.PredictBatchRequest, timeout: float, **kw: Any
    ) -> Any:
        self.calls += 1
        call = self.calls
        if call == 1:
            await self.second_done.wait()
        response = await super().PredictBatch(request, timeout, **kw)
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

        async def AppendDecisions(self, request: Any, timeout: float, **kw: Any) -> Any:
            response = await super().AppendDecisions(request, timeout, **kw)
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


# --- Outages: waited out, held in a bounded backlog, nothing dropped -----------------


class DownInference(FakeInference):
    """Unreachable (UNAVAILABLE, or DEADLINE_EXCEEDED while waiting for the channel)
    until ``back`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.back = asyncio.Event()
        self.refused = 0

    async def PredictBatch(self, request: Any, timeout: float, **kw: Any) -> Any:
        if not self.back.is_set():
            self.refused += 1
            codes = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
            raise RpcError(codes[self.refused % 2])
        return await super().PredictBatch(request, timeout, **kw)


class DownAudit(FakeAudit):
    def __init__(self) -> None:
        super().__init__()
        self.back = asyncio.Event()
        self.refused = 0

    async def AppendDecisions(self, request: Any, timeout: float, **kw: Any) -> Any:
        if not self.back.is_set():
            self.refused += 1
            raise RpcError(grpc.StatusCode.UNAVAILABLE)
        return await super().AppendDecisions(request, timeout, **kw)


async def until(predicate: Any, what: str) -> None:
    """Let the pipeline run until ``predicate()`` holds."""
    await wait_until_async(predicate, 5, what, interval=0.001)


async def test_calls_wait_for_the_channel_to_be_ready() -> None:
    inference, audit = FakeInference(), FakeAudit()
    p = make(inference, audit, [])
    for i in range(3):
        p.submit(pending(i))
    await run_until_drained(p)
    assert inference.wait_for_ready == [True]
    assert audit.wait_for_ready == [True]


async def test_an_inference_outage_is_waited_out_and_every_reading_decided() -> None:
    published: list[Outgoing] = []
    inference = DownInference()
    health = DecisionHealth(["occupancy"])
    p = make(inference, FakeAudit(), published, max_batch=4, health=health)
    task = asyncio.create_task(p.run())
    for i in range(10):
        p.submit(pending(i))
    await until(lambda: inference.refused >= 50, "many refused attempts")
    [model] = health.models()
    assert model.state is ModelState.INFERENCE_UNAVAILABLE
    assert model.queued == 10
    assert published == []
    for i in range(10, 20):  # readings keep coming during the outage
        p.submit(pending(i))
    inference.back.set()
    assert await p.drain(5)
    await asyncio.wait_for(task, 1)
    # Every reading decided once; the entity's own topic never goes back in time.
    assert sorted(triggers(published)) == sorted(f"r{i}" for i in range(20))
    on_entity = [int(t[1:]) for t in triggers(entity_topic(published))]
    assert on_entity == sorted(on_entity)
    [model] = health.models()
    assert model.state is ModelState.DECIDING
    assert model.queued == 0


async def test_an_audit_outage_is_reported_and_the_decisions_wait() -> None:
    published: list[Outgoing] = []
    audit = DownAudit()
    health = DecisionHealth(["occupancy"])
    p = make(FakeInference(), audit, published, health=health)
    task = asyncio.create_task(p.run())
    for i in range(5):
        p.submit(pending(i))
    await until(lambda: audit.refused >= 3, "appends retried")
    [model] = health.models()
    assert model.state is ModelState.AUDIT_UNAVAILABLE
    assert model.detail(model.since + 12).startswith("audit unavailable for 12 s, 5 readings")
    audit.back.set()
    assert await p.drain(5)
    await asyncio.wait_for(task, 1)
    assert triggers(published) == [f"r{i}" for i in range(5)]
    assert all(audit.published_when_logged)
    assert health.models()[0].state is ModelState.DECIDING


async def test_the_backlog_is_bounded_and_its_drops_counted() -> None:
    published: list[Outgoing] = []
    dropped: list[int] = []
    inference = DownInference()
    health = DecisionHealth(["occupancy"])
    p = make(
        inference,
        FakeAudit(),
        published,
        max_pending=10,
        max_batch=5,
        max_in_flight=1,
        on_overflow=lambda: dropped.append(1),
        health=health,
    )
    task = asyncio.create_task(p.run())
    for i in range(5):
        p.submit(pending(i))
    await until(lambda: inference.refused >= 3, "the first batch held")
    for i in range(5, 35):
        p.submit(pending(i))
    # One batch in flight (5) and the backlog (10): the 20 oldest of the rest were dropped.
    assert len(dropped) == 20
    assert health.models()[0].queued == 15
    inference.back.set()
    assert await p.drain(5)
    await asyncio.wait_for(task, 1)
    assert sorted(triggers(published)) == sorted(f"r{i}" for i in (*range(5), *range(25, 35)))
    assert health.models()[0].queued == 0


def entity_topic(published: Sequence[Outgoing]) -> list[Outgoing]:
    return [o for o in published if o.topic == "roost/h/decisions/occupancy/office"]


async def test_after_an_outage_the_freshest_reading_is_decided_first_and_the_rest_late() -> None:
    published: list[Outgoing] = []
    inference = DownInference()
    audit = FakeAudit()
    p = make(inference, audit, published, max_batch=4, max_in_flight=1)
    task = asyncio.create_task(p.run())
    p.submit(pending(0))
    await until(lambda: inference.refused >= 1, "the first batch held")
    for i in range(1, 10):  # the backlog: more than a batch
        p.submit(pending(i))
    inference.back.set()
    assert await p.drain(5)
    await asyncio.wait_for(task, 1)
    # Right after the outage, the newest readings (r8, r9) are decided with the oldest.
    assert triggers(published)[:5] == ["r0", "r8", "r9", "r1", "r2"]
    # The entity's topic (Home Assistant's state) never goes back in time: what was
    # decided after a newer reading is published beside it, as late.
    assert triggers(entity_topic(published)) == ["r0", "r8", "r9"]
    late = [o for o in published if o.topic == "roost/h/decisions/occupancy/office/late"]
    assert sorted(triggers(late)) == sorted(f"r{i}" for i in range(1, 8))
    assert len(published) == 10
    assert all(audit.published_when_logged)


class SlowInference(FakeInference):
    """Takes a little while per batch, and notes the most batches it had at once."""

    def __init__(self, on_first_call: Callable[[], None] = lambda: None) -> None:
        super().__init__()
        self.now = self.most = 0
        self.sizes: list[int] = []
        self._on_first_call = on_first_call

    async def PredictBatch(self, request: Any, timeout: float, **kw: Any) -> Any:
        self.sizes.append(len(request.inputs))
        if len(self.sizes) == 1:
            self._on_first_call()
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            await asyncio.sleep(0.005)
            return await super().PredictBatch(request, timeout, **kw)
        finally:
            self.now -= 1


async def test_while_a_backlog_drains_a_new_reading_waits_behind_one_batch_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Batches publish in the order taken: with four backlog batches taken at once, a
    reading arriving just after waited behind all four (a restarted hub decided again
    ~0.9 s late). One backlog batch at a time, the next batch's newest half takes it."""
    published: list[Outgoing] = []
    # The fresh reading arrives while the first backlog batch is being predicted (from
    # inside that call, so that a slow machine cannot let a second batch start first).
    inference = SlowInference(on_first_call=lambda: p.submit(pending(100, trigger="fresh")))
    monkeypatch.setattr("hub.pipeline.BACKLOG_BATCH", 8)
    p = make(inference, FakeAudit(), published, max_batch=10, max_in_flight=4, max_pending=1000)
    for i in range(100):  # the backlog a restarted hub read from its session
        p.submit(pending(i))
    task = asyncio.create_task(p.run())
    assert await p.drain(5)
    await asyncio.wait_for(task, 1)
    assert len(published) == 101
    assert triggers(published).index("fresh") < 2 * 8  # in the second batch
    assert inference.sizes[:3] == [8, 8, 8]  # short batches while more than 10 wait
    # Without a backlog, batches overlap as before.
    inference = SlowInference()
    p = make(inference, FakeAudit(), [], max_batch=10, max_in_flight=4)
    task = asyncio.create_task(p.run())
    for i in range(8):
        p.submit(pending(i))
        await asyncio.sleep(0)  # each its own batch
    assert await p.drain(5)
    await asyncio.wait_for(task, 1)
    assert inference.most >= 2


async def test_a_refused_model_is_reported_and_its_batch_dropped() -> None:
    published: list[Outgoing] = []
    health = DecisionHealth(["occupancy"])
    failed = decisions_counted("predict_failed")
    p = make(FakeInference(fail=[grpc.StatusCode.NOT_FOUND]), FakeAudit(), published, health=health)
    p.submit(pending(0))
    p.submit(pending(1))
    await run_until_drained(p)
    assert published == []
    assert decisions_counted("predict_failed") == failed + 2
    [model] = health.models()
    assert model.state is ModelState.MODEL_REFUSED
    assert "refuses the model (NOT_FOUND)" in model.detail(model.since)
    p.submit(pending(2))  # served again: deciding
    await run_until_drained(p)
    assert triggers(published) == ["r2"]
    assert health.models()[0].state is ModelState.DECIDING


# --- One poisoned reading does not take its batch down ---------------------------------

POISON = 0.625


class PoisonInference(FakeInference):
    """Refuses (INVALID_ARGUMENT) any batch holding a row whose first feature is POISON."""

    async def PredictBatch(self, request: Any, timeout: float, **kw: Any) -> Any:
        if any(t.float_values[0] == POISON for t in request.inputs):
            self.calls += 1
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT)
        return await super().PredictBatch(request, timeout, **kw)


async def test_a_poisoned_reading_is_isolated_and_the_rest_decided() -> None:
    published: list[Outgoing] = []
    inference = PoisonInference()
    invalid = decisions_counted("invalid_input")
    p = make(inference, FakeAudit(), published, max_batch=16)
    for i in range(16):
        p.submit(pending(i, POISON if i == 6 else 0.1))
    await run_until_drained(p)
    assert triggers(published) == [f"r{i}" for i in range(16) if i != 6]
    assert decisions_counted("invalid_input") == invalid + 1
    assert inference.calls <= 1 + 2 * 4  # 2·log2(16) extra calls at most


async def decide_with_poison(n: int, poisoned: set[int]) -> tuple[list[str], int]:
    published: list[Outgoing] = []
    inference = PoisonInference()
    p = make(inference, FakeAudit(), published, max_batch=64, max_pending=64)
    for i in range(n):
        p.submit(pending(i, POISON if i in poisoned else 0.9))
    await run_until_drained(p)
    return triggers(published), inference.calls


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 64).flatmap(lambda n: st.tuples(st.just(n), st.sets(st.integers(0, n - 1)))))
def test_only_poisoned_readings_are_ever_dropped(case: tuple[int, set[int]]) -> None:
    n, poisoned = case
    got, calls = asyncio.run(decide_with_poison(n, poisoned))
    assert got == [f"r{i}" for i in range(n) if i not in poisoned]  # the rest, in order
    assert calls <= 1 + 2 * max(1, len(poisoned)) * max(1, (n - 1).bit_length())


# --- A reading that comes again is decided once ----------------------------------------


async def test_a_redelivered_reading_is_decided_once() -> None:
    published: list[Outgoing] = []
    duplicates = decisions_counted("duplicate")
    p = make(FakeInference(), FakeAudit(), published)
    p.submit(pending(0))
    p.submit(pending(0))  # the broker redelivers it
    p.submit(pending(1))
    await run_until_drained(p)
    p.submit(pending(1))  # ... also after its decision was published
    p.submit(pending(2, area="kitchen", trigger="r1"))  # same id, another area: its own
    p.submit(pending(3, trigger=""))  # readings without an id are never merged
    p.submit(pending(4, trigger=""))
    await run_until_drained(p)
    assert triggers(published) == ["r0", "r1", "r1", "", ""]
    assert [json.loads(o.payload)["area"] for o in published][2] == "kitchen"
    assert decisions_counted("duplicate") == duplicates + 2


async def test_the_recent_ids_are_bounded() -> None:
    published: list[Outgoing] = []
    p = make(FakeInference(), FakeAudit(), published, recent_ids=3)
    for i in (0, 1, 2, 3, 0):  # r0 was forgotten after three newer ids
        p.submit(pending(i))
    await run_until_drained(p)
    assert triggers(published) == ["r0", "r1", "r2", "r3", "r0"]
