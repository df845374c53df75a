"""The job manager: plan, reserve the privacy budget, train in a child, stage the result.

**Order of operations (the privacy reasoning).**

1. ``StartTraining`` validates the request (the model has an active version in the
   registry, its task is supported), checks the privacy ledger against the audit log
   (:mod:`.ledger_guard`: a deleted or edited ledger refuses the run), takes the ledger's
   time (a clock that went back refuses the run), prunes the examples past retention at
   that time (:mod:`.gating`), checks that enough labelled examples remain and pins the
   ones the job will read (:meth:`ExampleStore.snapshot`).
2. It computes the exact DP mechanism the run will execute (noise multiplier calibrated
   for the target epsilon, Poisson sample rate, planned steps: :func:`worker.make_plan`)
   and **reserves it in the privacy ledger, at the time of step 1, before any training**.
   An over-budget request is refused with the ledger's FAILED_PRECONDITION and no job is
   created.
3. Only then is the job recorded (:mod:`services.personalization.job_table`) and started
   in a child process (:mod:`services.personalization.worker`, supervised by
   :mod:`services.personalization.launcher`), which re-derives the mechanism and refuses
   to train unless it equals the reserved one.
4. When the child ends, the ledger is settled with the steps that actually ran: a run
   stopped early spends less. The reservation is released only if no step ran (the child
   had not yet reported ``started``). If the child died mid-run, the last reported step
   count plus one is committed (a step may have run unreported): never less than what
   ran.
5. The candidate is exported (ONNX + manifest + model card), packed, signed with the
   hub's local-candidate key (:mod:`services.personalization.candidate`) and staged with
   the update service (:mod:`services.personalization.peer_calls`) as a *local version*
   ``<active x.y.z>.<n>``. It stays a candidate: shadow, A/B and promotion are the update
   service's and the operators' business, never this service's.

**Scope.** All models charge ONE scope, ``household``: occupancy and routine examples
come from the same sensors in the same minutes, so their data is not disjoint and the
parallel composition that per-model scopes would assume does not hold.

**One job at a time.** A ``StartTraining`` while a job runs is FAILED_PRECONDITION
(nothing is reserved): the hub has two cores and the serving path comes first.

**Restarts.** A job found QUEUED or RUNNING at start-up was interrupted: it becomes
FAILED ("interrupted by a restart"). If the run's final step count had been recorded,
the reservation is committed with it; otherwise it stays charged at the full reserved
steps (the ledger cannot know how far a killed run got). Nothing is refunded blindly.

Job records hold names, states, counts and epsilons, never a household value.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import shutil
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from models.manifest import Manifest
from services.kit.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    RoostError,
    Unavailable,
)
from services.modelstore.reader import RegistryReader
from services.personalization import public, worker
from services.personalization.accounting import mechanism_epsilon
from services.personalization.candidate import next_local_version, pack_and_sign, write_candidate
from services.personalization.config import PersonalizationConfig
from services.personalization.gating import enforce_retention
from services.personalization.job_table import JobRecord, JobTable, State
from services.personalization.launcher import Outcome, supervise
from services.personalization.ledger import PrivacyLedger
from services.personalization.ledger_guard import LedgerGuard
from services.personalization.ledger_records import Mechanism
from services.personalization.metrics import EPSILON_BUDGET, EPSILON_SPENT, EXAMPLES, JOBS_TOTAL
from services.personalization.peer_calls import Stager
from services.personalization.privacy_unit import check_units
from services.personalization.store import ExampleStore

logger = logging.getLogger(__name__)

SCOPE: Final = "household"
SUPPORTED: Final = ("occupancy", "routine")
UNSUPPORTED_MESSAGE: Final = "personalization supports occupancy and routine"


class JobManager:
    """Runs fine-tuning jobs one at a time; see the module docstring."""

    def __init__(
        self,
        config: PersonalizationConfig,
        *,
        store: ExampleStore,
        ledger: PrivacyLedger,
        jobs: JobTable,
        registry: RegistryReader,
        stage: Stager,
        signing_key_path: Path,
        guard: LedgerGuard | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        """``guard`` checks the ledger against the audit log before every run (the
        service always has one); ``clock`` is the time the ledger is asked about."""
        self._config = config
        self._store = store
        self._ledger = ledger
        self._jobs = jobs
        self._registry = registry
        self._stage = stage
        self._key_path = signing_key_path
        self._guard = guard
        self._clock = clock
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._work = config.data_dir / "candidates"

    @property
    def privacy_unit(self) -> str:
        """The household budget's privacy unit ("day" or "example")."""
        return self._config.privacy_unit

    @property
    def busy(self) -> bool:
        return self._task is not None and not self._task.done()

    # ---- start-up and shutdown

    async def recover(self) -> list[str]:
        """Fails jobs a restart interrupted (see the module docstring); returns their ids."""
        shutil.rmtree(self._work, ignore_errors=True)
        failed: list[str] = []
        for rec in await asyncio.to_thread(self._jobs.unfinished):
            if rec.steps_done is not None:
                await self._settle(rec.reservation_id, rec.steps_done)
                charged = f"{rec.steps_done} steps recorded, charged"
            else:
                charged = f"its reservation of {rec.steps_planned} steps stays charged"
            await asyncio.to_thread(
                self._jobs.put,
                replace(
                    rec,
                    state="failed",
                    message=f"interrupted by a restart; {charged}",
                    finished_at=datetime.now(UTC),
                ),
            )
            JOBS_TOTAL.labels("failed").inc()
            failed.append(rec.job_id)
            logger.warning("job %s of %s was interrupted by a restart", rec.job_id, rec.model)
        await self.refresh_metrics()
        return failed

    async def wait(self) -> None:
        """Returns once no job is running (at once if none is); never stops the job."""
        task = self._task
        if task is not None:
            await asyncio.wait({task})

    async def close(self) -> None:
        """Stops a running job (its spent steps are committed) and waits for it."""
        self._closing = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def refresh_metrics(self) -> None:
        report = await asyncio.to_thread(self._ledger.report, SCOPE)
        EPSILON_SPENT.labels(SCOPE).set(report.epsilon_spent)
        EPSILON_BUDGET.labels(SCOPE).set(report.epsilon_budget)
        for model, n in (await asyncio.to_thread(self._store.counts)).items():
            EXAMPLES.labels(model).set(n)

    # ---- StartTraining

    def supported_manifest(self, model: str) -> tuple[str, Manifest]:
        """The active version and manifest of a model personalization can train (blocking)."""
        if not model:
            raise InvalidArgument("model_name: required")
        state = self._registry.state(model)
        if state.active is None:
            raise NotFound(f"model_name: {model!r} has no active version in the registry")
        manifest = self._registry.load(model, state.active)
        if manifest.name not in SUPPORTED or manifest.task_kind != "classification":
            raise FailedPrecondition(UNSUPPORTED_MESSAGE)
        return state.active, manifest

    async def ready_for_a_run(self) -> datetime:
        """Before any use of the store that charges the ledger (a training job, a fleet
        round): the ledger is cross-checked against the audit trail (:mod:`.ledger_guard`)
        and retention is enforced with the ledger's clock; returns the time the run is
        charged at."""
        if self._guard is not None:
            await self._guard.check()
        return await asyncio.to_thread(
            enforce_retention,
            self._ledger,
            self._store,
            timedelta(days=self._config.retention_days),
            self._clock(),
        )

    async def start(
        self, model: str, target_epsilon: float, max_duration_seconds: int
    ) -> JobRecord:
        if not (math.isfinite(target_epsilon) and target_epsilon > 0):
            raise InvalidArgument("target_epsilon: must be a finite number > 0")
        limit = self._config.max_duration_seconds
        if max_duration_seconds < 0 or max_duration_seconds > limit:
            raise InvalidArgument(
                f"max_duration_seconds: must be between 0 (the default) and {limit}"
            )
        duration = max_duration_seconds or limit
        active, manifest = await asyncio.to_thread(self.supported_manifest, model)
        async with self._lock:
            if self.busy:
                raise FailedPrecondition(
                    "a training job is already running; one runs at a time: retry when it"
                    " has finished (GetJob/ListJobs)"
                )
            at = await self.ready_for_a_run()
            snapshot = await asyncio.to_thread(self._store.snapshot, model)
            needed = self._config.min_examples
            if snapshot.count < needed:
                raise FailedPrecondition(
                    f"model {model}: training needs at least {needed} labelled examples;"
                    f" {snapshot.count} are stored (add more with RecordLabel or AddExamples)"
                )
            task = manifest.name
            labels, shape = manifest.output_labels, manifest.input.shape
            available = await asyncio.to_thread(
                public.replay_rows, task, labels, shape, self._config.public_data_dir
            )
            # The ledger's delta (the budget's: config.budget_delta) is the one accounted.
            unit, delta = self._config.privacy_unit, self._ledger.policy_for(SCOPE).delta
            n_days = await asyncio.to_thread(self._store.day_count, model, snapshot.max_seq)
            check_units(unit, n_days if unit == "day" else snapshot.count, delta)
            plan = await asyncio.to_thread(
                worker.make_plan,
                task,
                n_private=snapshot.count,
                n_replay=min(snapshot.count, available),
                target_epsilon=float(target_epsilon),
                delta=delta,
                accountant=self._config.accountant,
                epochs=self._config.epochs,
                unit=unit,
                n_days=n_days,
            )
            job_id = uuid.uuid4().hex
            mechanism = Mechanism.dp_sgd(
                noise_multiplier=plan.noise_multiplier,
                sample_rate=plan.sample_rate,
                steps=plan.steps,
            )
            # Before any training: an over-budget run is refused here, nothing created.
            reservation = await asyncio.to_thread(
                self._ledger.reserve,
                SCOPE,
                mechanism,
                job_id=job_id,
                privacy_unit=unit,
                now=at,
            )
            rec = JobRecord(
                job_id=job_id,
                model=model,
                state="queued",
                progress=0.0,
                epsilon=0.0,
                message="",
                created_at=datetime.now(UTC),
                finished_at=None,
                metric_before=0.0,
                metric_after=0.0,
                reservation_id=reservation.id,
                steps_planned=plan.steps,
                steps_done=None,
                started=False,
            )
            await asyncio.to_thread(self._jobs.put, rec)
            JOBS_TOTAL.labels("queued").inc()
            out = self._work / job_id / model / manifest.file
            spec = worker.JobSpec(
                job_id=job_id,
                task=task,
                model=model,
                base_onnx=str(self._registry.version_dir(model, active) / manifest.file),
                labels=tuple(labels),
                shape=tuple(shape),
                store_path=str(self._config.data_dir / "examples.db"),
                public_data_dir=(
                    None
                    if self._config.public_data_dir is None
                    else str(self._config.public_data_dir)
                ),
                max_seq=snapshot.max_seq,
                target_epsilon=float(target_epsilon),
                delta=delta,
                accountant=self._config.accountant,
                plan=plan,
                # A fresh seed per run: predictable noise would be no noise.
                seed=secrets.randbelow(2**31 - 2_000_000),
                max_seconds=float(duration),
                nice=self._config.nice,
                max_memory_mb=self._config.max_memory_mb,
                out_onnx=str(out),
            )
            self._task = asyncio.create_task(
                self._run(rec, spec, active, manifest), name=f"personalization-job-{job_id}"
            )
        logger.info(
            "job %s: %s, target epsilon %.3g per %s, %d planned steps (noise %.3f, q %.4f)",
            job_id,
            model,
            target_epsilon,
            plan.unit,
            plan.steps,
            plan.noise_multiplier,
            plan.sample_rate,
        )
        await self.refresh_metrics()
        return rec

    async def rebuild_ledger(self) -> tuple[int, int]:
        """Rebuilds the privacy ledger from the audit log (no job may run meanwhile);
        returns (privacy records read, mechanisms in the rebuilt ledger)."""
        if self._guard is None:
            raise FailedPrecondition("the privacy ledger has no audit trail to rebuild from")
        async with self._lock:
            if self.busy:
                raise FailedPrecondition(
                    "a training job is running: rebuild the ledger once it has finished"
                )
            counts = await self._guard.rebuild()
        await self.refresh_metrics()
        return counts

    # ---- running a job

    async def _run(
        self, rec: JobRecord, spec: worker.JobSpec, active: str, manifest: Manifest
    ) -> None:
        try:
            rec = replace(rec, state="running")
            await asyncio.to_thread(self._jobs.put, rec)
            JOBS_TOTAL.labels("running").inc()
            outcome = await supervise(rec, spec, self._jobs, lambda: self._closing)
            rec = await asyncio.to_thread(self._jobs.get, rec.job_id)
            rec = await self._finish(rec, spec, outcome, active, manifest)
        except Exception:
            logger.exception("job %s: internal error", rec.job_id)
            rec = replace(
                rec,
                state="failed",
                message="internal error (see the service log)",
                finished_at=datetime.now(UTC),
            )
            # The reservation stays charged (status unknown): never refunded blindly.
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._jobs.put, rec)
        finally:
            shutil.rmtree(self._work / rec.job_id, ignore_errors=True)
        JOBS_TOTAL.labels(rec.state).inc()
        logger.info("job %s: %s", rec.job_id, rec.state)
        with contextlib.suppress(Exception):
            await self.refresh_metrics()

    async def _finish(
        self,
        rec: JobRecord,
        spec: worker.JobSpec,
        outcome: Outcome,
        active: str,
        manifest: Manifest,
    ) -> JobRecord:
        plan = spec.plan
        if outcome.result is not None:
            steps = int(outcome.result["steps"])
        elif not outcome.started:
            steps = 0  # no step touched the data: the one case for a release
        elif outcome.exact:
            steps = outcome.steps
        else:
            steps = min(plan.steps, outcome.steps + 1)  # a step may have run unreported
        # Record the count first: a crash from here on is settled with it at restart.
        rec = replace(rec, steps_done=steps)
        await asyncio.to_thread(self._jobs.put, rec)
        await self._settle(rec.reservation_id, steps)
        if outcome.result is not None:
            epsilon = float(outcome.result["epsilon"])
        else:
            epsilon = await asyncio.to_thread(
                mechanism_epsilon,
                plan.noise_multiplier,
                plan.sample_rate,
                steps,
                spec.delta,
                spec.accountant,
            )
        rec = replace(rec, epsilon=epsilon)
        if outcome.result is None:
            return await self._put_final(rec, "failed", outcome.message)
        result = outcome.result
        before, after = float(result["metric_before"]), float(result["metric_after"])
        notes = []
        if math.isnan(before) or math.isnan(after):
            before = after = 0.0
            notes.append(
                "no public base-task data on this hub: trained without replay, forgetting"
                " not measured (base_task_metric_* left 0)"
            )
        else:
            notes.append(f"base_task_metric: {result['metric']}")
        if steps < plan.steps:
            notes.append(f"stopped at its time limit after {steps} of {plan.steps} steps")
        rec = replace(rec, metric_before=before, metric_after=after, progress=1.0)
        try:
            name, version, sha = await self._export(rec, spec, active, result)
        except RoostError as e:
            return await self._put_final(rec, "failed", f"candidate not staged: {e}")
        rec = replace(rec, candidate_name=name, candidate_version=version, candidate_sha256=sha)
        notes.insert(0, f"candidate {version} staged (not active: shadow/A-B decide)")
        return await self._put_final(rec, "succeeded", "; ".join(notes))

    async def _put_final(self, rec: JobRecord, state: State, message: str) -> JobRecord:
        rec = replace(rec, state=state, message=message, finished_at=datetime.now(UTC))
        await asyncio.to_thread(self._jobs.put, rec)
        return rec

    async def _settle(self, reservation_id: str, steps: int) -> None:
        def settle() -> None:
            try:
                if steps == 0:
                    self._ledger.release(reservation_id)
                else:
                    self._ledger.commit(reservation_id, steps_done=steps)
            except NotFound:
                logger.error("ledger: reservation %s not found", reservation_id)
            except FailedPrecondition as e:
                # Already settled another way (a retry after a crash): keep what is there.
                logger.warning("ledger: reservation %s not settled again: %s", reservation_id, e)
            except Unavailable as e:
                # The audit log did not record it: it stays charged at the reserved steps.
                logger.error("ledger: reservation %s stays fully charged: %s", reservation_id, e)

        await asyncio.to_thread(settle)

    async def _export(
        self,
        rec: JobRecord,
        spec: worker.JobSpec,
        active: str,
        result: dict[str, Any],
    ) -> tuple[str, str, str]:
        model_dir = Path(spec.out_onnx).parent

        def build() -> tuple[bytes, bytes]:
            version = next_local_version(self._registry, rec.model, active)
            write_candidate(
                model_dir,
                base_dir=self._registry.version_dir(rec.model, active),
                version=version,
                job=rec,
                plan=spec.plan,
                epsilon=rec.epsilon,
                delta=spec.delta,
                accountant=spec.accountant,
                metric=str(result.get("metric", "")),
            )
            return pack_and_sign(
                model_dir,
                model_dir.parent / "candidate.tar",
                key_path=self._key_path,
                model=rec.model,
                version=version,
            )

        bundle, signature = await asyncio.to_thread(build)
        return await self._stage(rec.model, bundle, signature)


__all__ = ["SCOPE", "SUPPORTED", "UNSUPPORTED_MESSAGE", "JobManager"]
