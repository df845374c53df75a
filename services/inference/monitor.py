"""Work done after a response: shadow runs of a candidate, and drift accounting.

The request path only calls :meth:`Monitor.after`, which puts jobs on two bounded
queues without waiting (``put_nowait``); a job that finds its queue full is dropped
and counted (``roost_inference_shadow_dropped_total{model}``,
``roost_inference_drift_dropped_total{model}``). Neither a slow candidate nor a burst
of traffic can therefore slow or fail the active path:

- **Drift** (one worker): counts the inputs into the model's drift histograms. A small
  batch is counted inline (tens of microseconds); a large one (many features or rows)
  and the gauge export (one gauge per feature, at most once per second per model, and
  on every GetModelStatus) run in a thread, so the event loop never stalls on them.
- **Shadow** (another worker): runs the candidate on the same batch, on the registry's
  separate one-thread shadow pool, and only while no Predict/PredictBatch is in flight
  (:meth:`Monitor.request` marks them): the candidate uses the gaps between requests
  and does not compete with the active path for the CPU. Under sustained load the gaps
  vanish, the queue fills and further shadow jobs are dropped and counted: shadow
  coverage, not active latency, is what gives way (a hub's bursty traffic leaves
  ample gaps). Each run is compared with the active outputs of that request:

  - classifiers agree when the top labels match;
  - regressors agree when max |candidate - active| over the outputs is within
    ``regression_tolerance`` (default 0.5, in the model's output units, e.g. degC
    for comfort and Wh for the anomaly forecast).

Candidate outcomes (predictions, errors, compared, agreed, non-finite rows, the active
version's time on the same batch, output summaries) go into its rolling health stats;
a row with a NaN or infinite output counts as an error and is not compared
(``services.inference.outputs``). Its outputs are never returned to callers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from prometheus_client import Counter

from models.manifest import Manifest
from services.inference.drift import DRIFT_ALERT, DriftMonitor, DriftSettings
from services.inference.outputs import finite_rows, summaries
from services.inference.registry import LoadedModel, ModelRegistry, Serving

log = logging.getLogger(__name__)

SHADOW_DROPPED = Counter(
    "roost_inference_shadow_dropped_total",
    "Shadow runs of a candidate dropped because the shadow queue was full (overload).",
    ["model"],
)
DRIFT_DROPPED = Counter(
    "roost_inference_drift_dropped_total",
    "Batches not counted for drift because the drift queue was full (overload).",
    ["model"],
)
SHADOW_ERRORS = Counter(
    "roost_inference_shadow_errors_total", "Shadow runs of a candidate that failed.", ["model"]
)
EXPORT_INTERVAL_SECONDS = 1.0
# Up to this many value-vs-edge comparisons, drift counting runs inline (tens of us).
INLINE_DRIFT_COMPARISONS = 20_000
DEFAULT_SHADOW_QUEUE = 64
# Queued shadow jobs are coalesced into one candidate run of at most about this many rows.
SHADOW_MAX_ROWS = 4096
# A gap this long without prediction requests lets queued shadow runs go.
SHADOW_QUIET_SECONDS = 0.002
DEFAULT_DRIFT_QUEUE = 1024


@dataclass(frozen=True)
class _Job:
    serving: Serving
    batch: npt.NDArray[np.generic]
    # The active version's outputs for the batch, when a shadow run compares with them.
    active_out: npt.NDArray[np.float32] | None


def agreement(
    manifest: Manifest,
    active: npt.NDArray[np.float32],
    candidate: npt.NDArray[np.float32],
    tolerance: float,
) -> npt.NDArray[np.bool_]:
    """Per row, whether the candidate agrees with the active version (see module doc)."""
    if manifest.task_kind == "classification":
        return np.asarray(np.argmax(active, axis=1) == np.argmax(candidate, axis=1))
    if active.shape != candidate.shape:
        return np.zeros(len(active), dtype=bool)
    return np.asarray(np.max(np.abs(candidate - active), axis=1) <= tolerance)


class Monitor:
    def __init__(
        self,
        registry: ModelRegistry,
        *,
        shadow_queue: int = DEFAULT_SHADOW_QUEUE,
        drift_queue: int = DEFAULT_DRIFT_QUEUE,
        regression_tolerance: float = 0.5,
        drift: DriftSettings | None = None,
    ) -> None:
        self._registry = registry
        self._shadow_jobs: asyncio.Queue[_Job] = asyncio.Queue(maxsize=shadow_queue)
        self._drift_jobs: asyncio.Queue[_Job] = asyncio.Queue(maxsize=drift_queue)
        self.regression_tolerance = regression_tolerance
        self.drift_settings = drift or DriftSettings()
        self._drift: dict[str, DriftMonitor] = {}
        self._exported: dict[str, float] = {}
        self._workers: list[asyncio.Task[None]] = []
        # Predict/PredictBatch calls in flight; shadow runs wait until there are none.
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._last_request = 0.0
        # Shadow jobs dropped per model since start (GetModelStatus reports it).
        self.dropped: dict[str, int] = {}

    # ------------------------------------------------------------ request path

    @contextlib.contextmanager
    def request(self) -> Iterator[None]:
        """Marks a prediction request in flight (shadow runs wait for none)."""
        self._in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._last_request = time.monotonic()
                self._idle.set()

    async def _quiet(self) -> None:
        """Return once no prediction request has been in flight for SHADOW_QUIET_SECONDS."""
        while True:
            await self._idle.wait()
            wait = self._last_request + SHADOW_QUIET_SECONDS - time.monotonic()
            if wait <= 0 and self._in_flight == 0:
                return
            await asyncio.sleep(max(wait, 0.0))

    def after(
        self,
        serving: Serving,
        batch: npt.NDArray[np.generic],
        active_out: npt.NDArray[np.float32] | None,
    ) -> None:
        """Schedule drift accounting and (in shadow) the candidate's run; never blocks."""
        shadow = serving.shadow is not None and active_out is not None
        drift = bool(serving.active.manifest.reference)
        if not shadow and not drift:
            return  # nothing to do in the background
        if not self._workers or any(w.done() for w in self._workers):
            self._start()
        name = serving.name
        if drift:
            try:
                self._drift_jobs.put_nowait(_Job(serving, batch, None))
            except asyncio.QueueFull:
                DRIFT_DROPPED.labels(name).inc()
        if shadow:
            try:
                self._shadow_jobs.put_nowait(_Job(serving, batch, active_out))
            except asyncio.QueueFull:
                SHADOW_DROPPED.labels(name).inc()
                self.dropped[name] = self.dropped.get(name, 0) + 1

    # ------------------------------------------------------------ workers

    def _start(self) -> None:
        for w in self._workers:
            w.cancel()
        loop = asyncio.get_running_loop()
        self._workers = [
            loop.create_task(self._work(self._drift_jobs, self._count_drift)),
            loop.create_task(self._shadow_worker()),
        ]

    @staticmethod
    async def _work(queue: asyncio.Queue[_Job], process: Callable[[_Job], Awaitable[None]]) -> None:
        while True:
            job = await queue.get()
            try:
                await process(job)
            except Exception:
                log.exception("background job of %s failed", job.serving.name)
            finally:
                queue.task_done()

    async def _count_drift(self, job: _Job) -> None:
        drift = self.drift_for(job.serving.active.manifest)
        if drift is None:
            return
        if drift.cost(job.batch) <= INLINE_DRIFT_COMPARISONS:
            drift.observe(job.batch)
        else:
            await asyncio.to_thread(drift.observe, job.batch)
        now = time.monotonic()
        if now - self._exported.get(drift.model, 0.0) >= EXPORT_INTERVAL_SECONDS:
            self._exported[drift.model] = now
            await asyncio.to_thread(drift.export)

    async def _shadow_worker(self) -> None:
        """Waits for a gap between requests, then runs every queued job (coalesced into
        one session.run per candidate, up to SHADOW_MAX_ROWS rows) in the background."""
        queue = self._shadow_jobs
        while True:
            jobs = [await queue.get()]
            try:
                await self._quiet()  # only in a gap between prediction requests
                rows = len(jobs[0].batch)
                while not queue.empty() and rows < SHADOW_MAX_ROWS:
                    jobs.append(queue.get_nowait())
                    rows += len(jobs[-1].batch)
                groups: dict[tuple[int, int], list[_Job]] = {}
                for job in jobs:
                    candidate = job.serving.shadow
                    if candidate is not None and job.active_out is not None:
                        key = (id(job.serving.active), id(candidate))
                        groups.setdefault(key, []).append(job)
                for group in groups.values():
                    serving = group[0].serving
                    assert serving.shadow is not None
                    await self._shadow(
                        serving.active,
                        serving.shadow,
                        np.concatenate([j.batch for j in group]),
                        np.concatenate([j.active_out for j in group if j.active_out is not None]),
                    )
            except Exception:
                log.exception("shadow run of %s failed", jobs[0].serving.name)
            finally:
                for _ in jobs:
                    queue.task_done()

    async def _shadow(
        self,
        active: LoadedModel,
        candidate: LoadedModel,
        batch: npt.NDArray[np.generic],
        active_out: npt.NDArray[np.float32],
    ) -> None:
        m = candidate.manifest
        try:
            out, cost = await self._registry.run_shadow(candidate, batch)
        except Exception as e:
            # The exception text may quote inputs; log its type only.
            SHADOW_ERRORS.labels(m.name).inc()
            log.warning("shadow run of %s %s failed: %s", m.name, m.version, type(e).__name__)
            if self._still_shadow(candidate):
                self._registry.health.of(m.name, m.version).outcome(errors=len(batch))
            return
        # The active version on the same batch, for a like-with-like latency ratio.
        active_cost = await self._registry.time_shadow(active, batch)
        if not self._still_shadow(candidate):
            return  # the rollout moved on meanwhile (e.g. to A/B, a fresh window)
        stats = self._registry.health.of(m.name, m.version)
        stats.paired(cost, active_cost)
        finite = finite_rows(out)
        bad = len(batch) - int(finite.sum())
        out, active_out = out[finite], active_out[finite]
        agreed = agreement(active.manifest, active_out, out, self.regression_tolerance)
        stats.outcome(
            predictions=len(out),
            errors=bad,
            compared=len(out),
            agreed=int(agreed.sum()),
            non_finite=bad,
        )
        stats.outputs(summaries(m, out))

    def _still_shadow(self, candidate: LoadedModel) -> bool:
        """Whether ``candidate`` still runs in shadow (what its shadow runs count for)."""
        serving = self._registry.find(candidate.manifest.name)
        return serving is not None and serving.shadow is candidate

    async def drain(self) -> None:
        """Wait until every queued job is processed (tests, shutdown)."""
        if self._workers and not any(w.done() for w in self._workers):
            await self._drift_jobs.join()
            await self._shadow_jobs.join()

    async def close(self) -> None:
        for w in self._workers:
            w.cancel()
        for w in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await w
        self._workers = []

    # ------------------------------------------------------------ drift

    def drift_for(self, manifest: Manifest) -> DriftMonitor | None:
        """The drift monitor of the model, rebuilt when the active reference changes."""
        drift = self._drift.get(manifest.name)
        if not manifest.reference:
            if drift is not None:
                del self._drift[manifest.name]
                DRIFT_ALERT.labels(manifest.name).set(0.0)
            return None
        if drift is None or drift.reference is not manifest.reference:
            if drift is not None and drift.reference == manifest.reference:
                drift.reference = manifest.reference  # same histograms: keep counting
            else:
                drift = DriftMonitor(manifest, self.drift_settings)
                self._drift[manifest.name] = drift
        return drift
