"""The decision path: predict, record durably, then publish.

Readings that complete a model's feature window become ``Pending`` items. One task
takes whatever is pending (up to ``max_batch``), predicts it with one
``PredictBatch`` per model, appends the decisions to the audit log in one
``AppendDecisions`` call, and only once the audit service acknowledged them
publishes them on MQTT. The append is retried with the same decision ids until it
succeeds (the audit log is idempotent by id), so a decision is never published
unrecorded and an acknowledged one is never lost. Batching grows by itself under
load: while one batch is in flight the next one accumulates.

The action policy (:mod:`hub.policy`) runs in reading order: a batch whose outcome
depends on the last label waits until every earlier batch settled, and a batch's
decisions change the policy's memory only once the audit log acknowledged them.
Errors from inference and audit are told apart by :mod:`services.kit.peers`.

Outages lose nothing: a call that cannot reach inference or audit (down, restarting,
too slow) waits for the channel to be ready (``wait_for_ready``; the channels'
reconnect backoff is bounded to about a second) and is retried until the service is
back, while new readings wait in the bounded :class:`hub.backlog.Backlog` (no reading
id twice). Predictions, and the isolation of a refused reading, are
:mod:`hub.predict`'s. What the calls meet is reported to
:class:`hub.health.DecisionHealth` (is each model deciding, and why not).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter as Tally
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace

import grpc
import numpy as np
import numpy.typing as npt
from prometheus_client import Counter, Gauge, Histogram

from hub.backlog import Backlog, Duplicate
from hub.health import DecisionHealth, Peer
from hub.ids import uuid7
from hub.payload import decision_payload
from hub.peer_streams import AppendsDecisions, PredictsBatches
from hub.policy import ActionPolicy, ActionRule, Outcome, PolicyRound
from hub.predict import RETRY_FIRST_DELAY, RETRY_MAX_DELAY, Predicted, Predictor
from hub.topics import decision_topic, late_decision_topic
from hub.why import Why
from roost.audit.v1 import audit_service_pb2 as audit_pb
from services.kit.peers import is_retryable, peer_error
from services.kit.ratelog import RateLimitedLog

log = logging.getLogger(__name__)

DECISIONS = Counter(
    "roost_hub_decisions_total", "Decisions by model and outcome.", ["model", "outcome"]
)
DECISION_LATENCY = Histogram(
    "roost_hub_decision_latency_seconds",
    "From a reading's arrival to its decision being published.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0),
)
BATCH_SIZE = Histogram(
    "roost_hub_batch_size", "Decisions per batch.", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 512)
)
STAGE_SECONDS = Histogram(
    "roost_hub_stage_seconds",
    "Time in each stage of the decision path: per reading for intake (journal, checks, "
    "windows), per batch for predict, record, ordering and publish.",
    ["stage"],
    buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
PENDING = Gauge("roost_hub_pending_decisions", "Readings waiting for a decision.")
# The stages' children, looked up once (a labels() lookup per batch and stage cost more
# than the observation).
STAGE = {s: STAGE_SECONDS.labels(s) for s in ("predict", "record", "ordering", "publish")}
AUDIT_RETRIES = Counter(
    "roost_hub_audit_append_retries_total", "Audit appends retried (audit slow or down)."
)


@dataclass(frozen=True)
class Pending:
    model: str
    area: str
    features: npt.NDArray[np.float32]
    feature_names: tuple[str, ...]
    reading_ts: float
    trigger_id: str
    received_at: float  # time.perf_counter() at arrival
    journal_id: int = 0  # the reading's entry in the hub's journal (0: none)
    # Decided after a newer reading of its (model, area), while a backlog drained.
    late: bool = False


@dataclass(frozen=True)
class Outgoing:
    topic: str
    payload: bytes
    decision_id: str = ""


@dataclass(frozen=True)
class Recorded:
    """A decision the audit log acknowledged, and the action it allows (if any)."""

    model: str
    area: str
    decision_id: str
    label: str
    index: int
    topic: str
    payload: bytes
    action: ActionRule | None
    late: bool = False

    @property
    def outgoing(self) -> Outgoing:
        return Outgoing(self.topic, self.payload, self.decision_id)


Publish = Callable[[Sequence[Outgoing]], Awaitable[None]]
# Called once a batch is acknowledged by the audit log, before it is published; the
# awaitable may hold the publish back briefly (Home Assistant discovery of new entities).
OnRecorded = Callable[[Sequence[Recorded]], Awaitable[None]]
# Called when items leave the pipeline for good: their decisions acknowledged by the
# audit log, with the messages about to be published, or never to be made (duplicate,
# dropped, refused: no messages). Not for a batch cancelled at a stop: its readings are
# decided on the next start. Then called with the messages once published.
OnSettled = Callable[[Sequence[Pending], Sequence[Outgoing]], None]
OnPublished = Callable[[Sequence[Outgoing]], None]


@dataclass(frozen=True)
class _Decided:
    pending: Pending
    decision: audit_pb.Decision
    outcome: Outcome


def _count(decided: Sequence[_Decided], outcome: str) -> None:
    for model, n in Tally(d.pending.model for d in decided).items():
        DECISIONS.labels(model, outcome).inc(n)


def _resolve_after(earlier: asyncio.Future[None] | None, mine: asyncio.Future[None]) -> None:
    """Resolve ``mine`` as soon as ``earlier`` is resolved (now, if it already is)."""

    def resolve(_: object = None) -> None:
        if not mine.done():
            mine.set_result(None)

    if earlier is None or earlier.done():
        resolve()
    else:
        earlier.add_done_callback(resolve)


@dataclass(frozen=True)
class _Turn:
    """A batch's place in line, in the order batches were taken (reading order).

    ``settled``: the batch's acknowledged decisions are in the policy's memory (or it
    has none). ``published``: its decisions are published (or never will be). Each
    resolves only after the previous batch's, also when a batch fails.
    """

    earlier_settled: asyncio.Future[None] | None
    earlier_published: asyncio.Future[None] | None
    settled: asyncio.Future[None]
    published: asyncio.Future[None]

    async def after_earlier_settled(self) -> None:
        if self.earlier_settled is not None:
            await asyncio.shield(self.earlier_settled)

    async def after_earlier_published(self) -> None:
        if self.earlier_published is not None:
            await asyncio.shield(self.earlier_published)

    def settle(self) -> None:
        _resolve_after(self.earlier_settled, self.settled)

    def finish(self) -> None:
        self.settle()
        _resolve_after(self.earlier_published, self.published)


# Readings per batch while a backlog drains (one batch in flight then): a reading
# arriving meanwhile waits behind at most this many. A hub restarted after 60 s at 300
# readings/s decided again 1.01-1.26 s after it was ready with 128, 1.37-1.87 s with the
# whole max_batch (512: ~0.2 s end to end per backlog batch), 2026-12-06.
BACKLOG_BATCH = 128


class DecisionPipeline:
    def __init__(
        self,
        *,
        hub_id: str,
        inference: PredictsBatches,
        audit: AppendsDecisions,
        publish: Publish,
        predict_deadline: float,
        audit_deadline: float,
        max_pending: int,
        max_batch: int,
        on_overflow: Callable[[], None],
        max_in_flight: int = 4,
        explain_top_k: int = 3,
        policy: ActionPolicy | None = None,
        on_recorded: OnRecorded | None = None,
        health: DecisionHealth | None = None,
        recent_ids: int = 10_000,
        on_settled: OnSettled | None = None,
        on_published: OnPublished | None = None,
    ) -> None:
        self.policy = policy or ActionPolicy()
        self.health = health or DecisionHealth()
        self._log = RateLimitedLog(log)
        self._on_recorded = on_recorded
        self._on_settled: OnSettled = on_settled or (lambda _items, _out: None)
        self._on_published: OnPublished = on_published or (lambda _out: None)
        self._hub_id = hub_id
        self._audit = audit
        self._publish = publish
        self._audit_deadline = audit_deadline
        self._max_batch = max_batch
        # Held while the services are slow or down; beyond max_pending the oldest goes.
        self._pending: Backlog[Pending] = Backlog(max_pending, recent_ids)
        self._predictor: Predictor[Pending] = Predictor(
            inference,
            deadline=predict_deadline,
            explain_top_k=explain_top_k,
            health=self.health,
            on_dropped=lambda model, outcome, n: DECISIONS.labels(model, outcome).inc(n),
            queued=lambda: len(self._pending),
        )
        self._on_overflow = on_overflow
        self._why = Why()  # each room's usual levels, for the "why" in words
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self._max_in_flight = max_in_flight
        self._in_flight: set[asyncio.Task[None]] = set()

    def submit(self, item: Pending) -> None:
        try:
            dropped = self._pending.add(item)
        except Duplicate:
            DECISIONS.labels(item.model, "duplicate").inc()
            self._on_settled([item], ())
            return
        self.health.queued(item.model, 1)
        if dropped is not None:
            self.health.queued(dropped.model, -1)
            self._on_overflow()
            self._on_settled([dropped], ())
        self._idle.clear()
        PENDING.set(len(self._pending))
        self._wakeup.set()

    def remember(self, model: str, area: str, reading_id: str) -> None:
        """A reading decided before (replayed from the journal): never decide it again."""
        self._pending.remember(model, area, reading_id)

    async def run(self) -> None:
        """Process batches until cancelled, or closed and drained.

        Up to ``max_in_flight`` batches overlap (one predicting while another is being
        recorded), which hides the round-trip latency of each stage; one at a time
        while a backlog drains (:meth:`_room`). Batches still
        settle and publish in the order they were taken, and each only after its own
        append was acknowledged.
        """
        settled: asyncio.Future[None] | None = None
        published: asyncio.Future[None] | None = None
        try:
            while True:
                if not self._pending:
                    if not self._in_flight:
                        self._idle.set()
                        if self._closing:
                            return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                if len(self._in_flight) >= self._room():
                    self._wakeup.clear()
                    await self._wakeup.wait()  # a batch finished (or more arrived)
                    continue
                batch = [
                    replace(p, late=True) if late and not p.late else p
                    for p, late in self._pending.take(self._batch_size())
                ]
                PENDING.set(len(self._pending))
                BATCH_SIZE.observe(len(batch))
                loop = asyncio.get_running_loop()
                turn = _Turn(settled, published, loop.create_future(), loop.create_future())
                settled, published = turn.settled, turn.published
                task = asyncio.create_task(self._process(batch, turn))
                self._in_flight.add(task)
                task.add_done_callback(self._finished)
        finally:
            for task in list(self._in_flight):
                task.cancel()

    def _backlog(self) -> bool:
        return len(self._pending) > self._max_batch

    def _room(self) -> int:
        """How many batches may be in flight: ``max_in_flight``, or one while a backlog
        drains (more readings wait than a batch takes). Batches publish in the order
        they were taken, so each backlog batch taken ahead of time is one more that a
        reading arriving now waits behind; one at a time, the next batch (its newest
        half) takes what arrived meanwhile."""
        return 1 if self._backlog() else self._max_in_flight

    def _batch_size(self) -> int:
        """``max_batch``; while a backlog drains, :data:`BACKLOG_BATCH` at most, so that
        the one batch a new reading waits behind is short."""
        return min(self._max_batch, BACKLOG_BATCH) if self._backlog() else self._max_batch

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("decision batch failed", exc_info=task.exception())
        self._wakeup.set()

    async def drain(self, within: float) -> bool:
        """Stop taking new work once the queue is empty; True if drained in time."""
        self._closing = True
        self._wakeup.set()
        try:
            await asyncio.wait_for(self._idle.wait(), within)
        except TimeoutError:
            return False
        return True

    async def _process(self, batch: list[Pending], turn: _Turn) -> None:
        accounted = False  # handed to on_settled (or deliberately not)
        try:
            t0 = time.perf_counter()
            predicted = await self._predictor.predict(batch)
            t1 = time.perf_counter()
            if any(self.policy.remembers(p.model, p.area) for p in batch if not p.late):
                # Its outcome depends on the last acknowledged label: every earlier
                # batch must have settled first.
                await turn.after_earlier_settled()
            t2 = time.perf_counter()
            decided = self._decide(predicted, self.policy.round())
            results = await self._append([d.decision for d in decided]) if decided else None
            t3 = time.perf_counter()
            if results is not None and len(results) != len(decided):
                raise ValueError(f"audit acknowledged {len(results)} of {len(decided)} decisions")
            recorded = self._recorded(decided, results) if results is not None else []
            # Recorded (or refused for good): durable before anything is published.
            accounted = True
            self._on_settled(batch, [r.outgoing for r in recorded])
            await turn.after_earlier_settled()
            if results is not None:
                # Acknowledged: the policy remembers these labels, in reading order.
                for d in decided:
                    if not d.pending.late:
                        self.policy.commit(d.outcome)
            turn.settle()
            await turn.after_earlier_published()  # keep the publish order of batches
            t4 = time.perf_counter()
            STAGE["predict"].observe(t1 - t0)
            STAGE["record"].observe(t3 - t2)
            STAGE["ordering"].observe((t2 - t1) + (t4 - t3))
            if results is None:
                _count(decided, "unrecorded")
                return
            await self._deliver(recorded)
            done = time.perf_counter()
            STAGE["publish"].observe(done - t4)
            for d in decided:
                DECISION_LATENCY.observe(done - d.pending.received_at)
            _count(decided, "published")
        except asyncio.CancelledError:
            accounted = True  # stopping: not settled, decided again on the next start
            raise
        finally:
            if not accounted:
                self._on_settled(batch, ())  # failed for good (a bug): not retried forever
            turn.finish()
            for model, n in Tally(p.model for p in batch).items():
                self.health.queued(model, -n)

    def _recorded(
        self, decided: list[_Decided], results: Sequence[audit_pb.AppendResult]
    ) -> list[Recorded]:
        recorded: list[Recorded] = []
        for d, r in zip(decided, results, strict=True):
            p = d.pending
            recorded.append(
                Recorded(
                    model=p.model,
                    area=p.area,
                    decision_id=d.decision.decision_id,
                    label=d.decision.output_label,
                    index=r.index,
                    topic=(late_decision_topic if p.late else decision_topic)(
                        self._hub_id, p.model, p.area
                    ),
                    payload=decision_payload(
                        d.decision,
                        index=r.index,
                        area=p.area,
                        reading_ts=p.reading_ts,
                        trigger_id=p.trigger_id,
                        why=self._why.explain(d.decision, p.area),
                    ),
                    action=d.outcome.rule,
                    late=p.late,
                )
            )
        return recorded

    async def _deliver(self, recorded: list[Recorded]) -> None:
        """Hand acknowledged decisions to ``on_recorded``, then publish them."""
        if self._on_recorded is not None:
            # Acknowledged: allowed actions may run now, even while the broker is away.
            await self._on_recorded(recorded)
        outgoing = [r.outgoing for r in recorded]
        await self._publish(outgoing)
        self._on_published(outgoing)

    def _decide(self, predicted: list[Predicted[Pending]], policy: PolicyRound) -> list[_Decided]:
        """The decision records, in reading order; the policy evaluated in that order."""
        decided: list[_Decided] = []
        for item in predicted:
            p, pred = item.pending, item.prediction
            if p.late:
                outcome = self.policy.late(p.model, p.area, pred.label, pred.values)
            else:
                outcome = policy.evaluate(p.model, p.area, pred.label, pred.values)
            decision = audit_pb.Decision(
                decision_id=uuid7(),
                decided_at=item.decided_at,
                hub_id=self._hub_id,
                entity_id=f"{p.model}.{p.area}",
                model=item.model,
                inputs=audit_pb.DecisionInputs(
                    feature_names=list(p.feature_names), tensor=item.tensor
                ),
                output_values=list(pred.values),
                output_label=pred.label,
                confidence=pred.confidence,
                explanation=list(pred.attributions),
                policy=outcome.policy,
                action=outcome.action,
                actor=audit_pb.ACTOR_AUTOMATIC,
            )
            decided.append(_Decided(p, decision, outcome))
        return decided

    async def _append(
        self, decisions: list[audit_pb.Decision]
    ) -> Sequence[audit_pb.AppendResult] | None:
        """Append until acknowledged (same ids, so retries are idempotent).

        Retryable errors (audit down, restarting, slow) are retried until the task is
        cancelled (the drain deadline passed); a refusal is given up with an error
        (None). Either way those decisions were never acknowledged: never published.
        """
        request = audit_pb.AppendDecisionsRequest(decisions=decisions)
        delay = RETRY_FIRST_DELAY
        while True:
            try:
                response: audit_pb.AppendDecisionsResponse = await self._audit.AppendDecisions(
                    request, timeout=self._audit_deadline, wait_for_ready=True
                )
                self.health.peer_ok(Peer.AUDIT)
                return response.results
            except grpc.aio.AioRpcError as e:
                if not is_retryable(e):
                    error = peer_error(e, "audit", "AppendDecisions", echo_details=True)
                    log.error("audit refused %d decisions: %s", len(decisions), error)
                    return None
                AUDIT_RETRIES.inc()
                self.health.peer_failed(Peer.AUDIT)
                self._log(
                    "audit_outage",
                    "%s; retrying (decisions wait, none is published unrecorded; %d queued)",
                    peer_error(e, "audit", "AppendDecisions"),
                    len(self._pending),
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_DELAY)
