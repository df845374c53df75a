"""Fine-tuning jobs: plan, reserve the privacy budget, train in a child, stage the result.

**Order of operations (the privacy reasoning).**

1. ``StartTraining`` validates the request (the model has an active version in the
   registry, its task is supported, enough labelled examples are stored) and pins the
   examples the job will read (:meth:`ExampleStore.snapshot`).
2. It computes the exact DP mechanism the run will execute (noise multiplier calibrated
   for the target epsilon, Poisson sample rate, planned steps: :func:`worker.make_plan`)
   and **reserves it in the privacy ledger before any training**. An over-budget request
   is refused with the ledger's FAILED_PRECONDITION and no job is created.
3. Only then is the job recorded and started in a child process
   (:mod:`services.personalization.worker`), which re-derives the mechanism and refuses
   to train unless it equals the reserved one.
4. When the child ends, the ledger is settled with the steps that actually ran: a run
   stopped early spends less. The reservation is released only if no step ran (the child
   had not yet reported ``started``). If the child died mid-run, the last reported step
   count plus one is committed (a step may have run unreported): never less than what
   ran.
5. The candidate is exported (ONNX + manifest + model card), packed, signed with the
   hub's local-candidate key and staged with the update service as a *local version*
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
import functools
import json
import logging
import math
import multiprocessing
import secrets
import shutil
import sqlite3
import threading
import time
import uuid
import warnings
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Final, Literal

from prometheus_client import Counter, Gauge

from models.manifest import MANIFEST_FILE, Manifest, sha256_file
from services.kit import sqlite as kit_sqlite
from services.kit.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    RoostError,
)
from services.modelstore import local_key
from services.modelstore.bundle import pack_bundle, parse_version
from services.modelstore.registry import Registry
from services.personalization import public, worker
from services.personalization.config import PersonalizationConfig
from services.personalization.ledger import Mechanism, PrivacyLedger
from services.personalization.store import ExampleStore

logger = logging.getLogger(__name__)

SCOPE: Final = "household"
SUPPORTED: Final = ("occupancy", "routine")
UNSUPPORTED_MESSAGE: Final = "personalization supports occupancy and routine"
#: Seconds past a job's max duration before the child is killed (imports, export).
KILL_GRACE_SECONDS: Final = 60.0
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

State = Literal["queued", "running", "succeeded", "failed", "cancelled"]

EPSILON_SPENT = Gauge(
    "roost_personalization_epsilon_spent",
    "Privacy budget (epsilon) spent in the current period, by data scope.",
    ["scope"],
)
EPSILON_BUDGET = Gauge(
    "roost_personalization_epsilon_budget",
    "Privacy budget (epsilon) per period, by data scope.",
    ["scope"],
)
JOBS_TOTAL = Counter(
    "roost_personalization_jobs", "Fine-tuning jobs that reached each state.", ["state"]
)
EXAMPLES = Gauge(
    "roost_personalization_examples", "Labelled examples in the local store, by model.", ["model"]
)

Stager = Callable[[str, bytes, bytes], Awaitable[tuple[str, str, str]]]
"""``(model, bundle, signature) -> (name, version, sha256)`` of the staged candidate."""


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    model: str
    state: State
    progress: float
    epsilon: float
    message: str
    created_at: datetime
    finished_at: datetime | None
    metric_before: float
    metric_after: float
    reservation_id: str
    steps_planned: int
    #: Steps known to have run (None until the run's end is known).
    steps_done: int | None
    started: bool
    candidate_name: str = ""
    candidate_version: str = ""
    candidate_sha256: str = ""


_COLUMNS: Final = (
    "job_id",
    "model",
    "state",
    "progress",
    "epsilon",
    "message",
    "created_at_us",
    "finished_at_us",
    "metric_before",
    "metric_after",
    "reservation_id",
    "steps_planned",
    "steps_done",
    "started",
    "candidate_name",
    "candidate_version",
    "candidate_sha256",
)
_SCHEMA: Final = """CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    state TEXT NOT NULL,
    progress REAL NOT NULL,
    epsilon REAL NOT NULL,
    message TEXT NOT NULL,
    created_at_us INTEGER NOT NULL,
    finished_at_us INTEGER,
    metric_before REAL NOT NULL,
    metric_after REAL NOT NULL,
    reservation_id TEXT NOT NULL,
    steps_planned INTEGER NOT NULL,
    steps_done INTEGER,
    started INTEGER NOT NULL,
    candidate_name TEXT NOT NULL,
    candidate_version TEXT NOT NULL,
    candidate_sha256 TEXT NOT NULL
)"""


def _to_us(t: datetime) -> int:
    return (t - EPOCH) // timedelta(microseconds=1)


def _from_us(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def _row(rec: JobRecord) -> tuple[Any, ...]:
    return (
        rec.job_id,
        rec.model,
        rec.state,
        rec.progress,
        rec.epsilon,
        rec.message,
        _to_us(rec.created_at),
        None if rec.finished_at is None else _to_us(rec.finished_at),
        rec.metric_before,
        rec.metric_after,
        rec.reservation_id,
        rec.steps_planned,
        rec.steps_done,
        int(rec.started),
        rec.candidate_name,
        rec.candidate_version,
        rec.candidate_sha256,
    )


def _record(row: tuple[Any, ...]) -> JobRecord:
    return JobRecord(
        job_id=row[0],
        model=row[1],
        state=row[2],
        progress=float(row[3]),
        epsilon=float(row[4]),
        message=row[5],
        created_at=_from_us(int(row[6])),
        finished_at=None if row[7] is None else _from_us(int(row[7])),
        metric_before=float(row[8]),
        metric_after=float(row[9]),
        reservation_id=row[10],
        steps_planned=int(row[11]),
        steps_done=None if row[12] is None else int(row[12]),
        started=bool(row[13]),
        candidate_name=row[14],
        candidate_version=row[15],
        candidate_sha256=row[16],
    )


class JobTable:
    """The job table (SQLite, WAL, synchronous FULL). Thread-safe."""

    def __init__(self, path: Path) -> None:
        self._conn = kit_sqlite.connect_durable(path, what="job table", check_same_thread=False)
        kit_sqlite.migrate(
            self._conn,
            ((_SCHEMA, "CREATE INDEX IF NOT EXISTS jobs_created ON jobs(created_at_us)"),),
            what="job table",
        )
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def put(self, rec: JobRecord) -> JobRecord:
        marks = ", ".join("?" for _ in _COLUMNS)
        with self._tx() as conn:
            conn.execute(
                f"INSERT OR REPLACE INTO jobs ({', '.join(_COLUMNS)}) VALUES ({marks})",  # noqa: S608 - fixed columns
                _row(rec),
            )
        return rec

    def get(self, job_id: str) -> JobRecord:
        with self._tx() as conn:
            row = conn.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE job_id = ?",  # noqa: S608
                (job_id,),
            ).fetchone()
        if row is None:
            raise NotFound(f"job_id: no job {job_id!r}")
        return _record(row)

    def page(self, offset: int, limit: int) -> tuple[list[JobRecord], bool]:
        """Jobs newest first; the bool says whether more follow."""
        with self._tx() as conn:
            rows = conn.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM jobs"  # noqa: S608
                " ORDER BY created_at_us DESC, rowid DESC LIMIT ? OFFSET ?",
                (limit + 1, offset),
            ).fetchall()
        return [_record(r) for r in rows[:limit]], len(rows) > limit

    def unfinished(self) -> list[JobRecord]:
        with self._tx() as conn:
            rows = conn.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM jobs"  # noqa: S608
                " WHERE state IN ('queued', 'running') ORDER BY created_at_us"
            ).fetchall()
        return [_record(r) for r in rows]


# --------------------------------------------------------------------------- accounting


@functools.lru_cache(maxsize=1024)
def mechanism_epsilon(
    noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str
) -> float:
    """Epsilon of one DP-SGD mechanism alone (what a job or a ledger entry cost)."""
    if steps <= 0:
        return 0.0
    from opacus.accountants import create_accountant  # type: ignore[import-untyped]  # noqa: PLC0415

    acc = create_accountant(mechanism=accountant)
    acc.history = [(noise_multiplier, sample_rate, steps)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return float(acc.get_epsilon(delta=delta))


# --------------------------------------------------------------------------- the manager


@dataclass
class _Outcome:
    kind: Literal["result", "error", "died", "timeout", "shutdown"]
    message: str = ""
    started: bool = False
    steps: int = 0
    exact: bool = False
    result: dict[str, Any] | None = None


class JobManager:
    """Runs fine-tuning jobs one at a time; see the module docstring."""

    def __init__(
        self,
        config: PersonalizationConfig,
        *,
        store: ExampleStore,
        ledger: PrivacyLedger,
        jobs: JobTable,
        registry: Registry,
        stage: Stager,
        signing_key_path: Path,
    ) -> None:
        self._config = config
        self._store = store
        self._ledger = ledger
        self._jobs = jobs
        self._registry = registry
        self._stage = stage
        self._key_path = signing_key_path
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._work = config.data_dir / "candidates"

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
            snapshot = await asyncio.to_thread(self._store.snapshot, model)
            needed = self._config.min_examples
            if snapshot.count < needed:
                raise FailedPrecondition(
                    f"model {model}: training needs at least {needed} labelled examples;"
                    f" {snapshot.count} are stored (add more with RecordLabel or AddExamples)"
                )
            task = manifest.name
            labels, shape = manifest.output_labels, manifest.input.shape
            available = await asyncio.to_thread(public.replay_rows, task, labels, shape)
            plan = await asyncio.to_thread(
                worker.make_plan,
                task,
                n_private=snapshot.count,
                n_replay=min(snapshot.count, available),
                target_epsilon=float(target_epsilon),
                delta=self._config.delta,
                accountant=self._config.accountant,
                epochs=self._config.epochs,
            )
            job_id = uuid.uuid4().hex
            mechanism = Mechanism.dp_sgd(
                noise_multiplier=plan.noise_multiplier,
                sample_rate=plan.sample_rate,
                steps=plan.steps,
            )
            # Before any training: an over-budget run is refused here, nothing created.
            reservation = await asyncio.to_thread(
                self._ledger.reserve, SCOPE, mechanism, job_id=job_id
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
                max_seq=snapshot.max_seq,
                target_epsilon=float(target_epsilon),
                delta=self._config.delta,
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
            "job %s: %s, target epsilon %.3g, %d planned steps (noise %.3f, q %.4f)",
            job_id,
            model,
            target_epsilon,
            plan.steps,
            plan.noise_multiplier,
            plan.sample_rate,
        )
        await self.refresh_metrics()
        return rec

    # ---- running a job

    async def _run(
        self, rec: JobRecord, spec: worker.JobSpec, active: str, manifest: Manifest
    ) -> None:
        try:
            rec = replace(rec, state="running")
            await asyncio.to_thread(self._jobs.put, rec)
            JOBS_TOTAL.labels("running").inc()
            outcome = await self._supervise(rec, spec)
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

    async def _supervise(self, rec: JobRecord, spec: worker.JobSpec) -> _Outcome:
        ctx = multiprocessing.get_context("spawn")
        receive, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(
            target=worker.run, args=(spec, send), name=f"roost-train-{rec.job_id[:8]}"
        )
        proc.start()
        send.close()
        deadline = time.monotonic() + spec.max_seconds + KILL_GRACE_SECONDS
        started, steps, last_saved = False, 0, 0.0
        outcome: _Outcome | None = None
        try:
            while outcome is None:
                msg = await asyncio.to_thread(_receive, receive, 0.25)
                if msg == ("eof",):
                    outcome = _Outcome("died", "the training process ended unexpectedly")
                elif msg is None:
                    if self._closing:
                        outcome = _Outcome("shutdown", "stopped by a service shutdown")
                    elif time.monotonic() > deadline:
                        outcome = _Outcome("timeout", "exceeded its time limit and was stopped")
                elif msg[0] == "started":
                    started = True
                    rec = replace(rec, started=True)
                    await asyncio.to_thread(self._jobs.put, rec)
                elif msg[0] == "progress":
                    steps = int(msg[2])
                    if time.monotonic() - last_saved > 0.5 or msg[1] >= 1.0:
                        last_saved = time.monotonic()
                        rec = replace(rec, progress=min(1.0, float(msg[1])))
                        await asyncio.to_thread(self._jobs.put, rec)
                elif msg[0] == "result":
                    outcome = _Outcome("result", started=True, result=dict(msg[1]))
                elif msg[0] == "error":
                    started, steps, exact = bool(msg[2]), int(msg[3]), bool(msg[4])
                    outcome = _Outcome("error", str(msg[1]), started, steps, exact)
        finally:
            if proc.is_alive() and (outcome is None or outcome.kind != "result"):
                proc.kill()
            await asyncio.to_thread(proc.join, 10)
            if proc.is_alive():
                proc.kill()
                await asyncio.to_thread(proc.join, 5)
            receive.close()
        if outcome.kind in ("died", "timeout", "shutdown"):
            outcome.started, outcome.steps = started, steps
        return outcome

    async def _finish(
        self,
        rec: JobRecord,
        spec: worker.JobSpec,
        outcome: _Outcome,
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

        await asyncio.to_thread(settle)

    async def _export(
        self,
        rec: JobRecord,
        spec: worker.JobSpec,
        active: str,
        result: dict[str, Any],
    ) -> tuple[str, str, str]:
        model_dir = Path(spec.out_onnx).parent
        bundle_path = model_dir.parent / "candidate.tar"

        def build() -> tuple[bytes, bytes]:
            version = self._next_version(rec.model, active)
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
            bundle = pack_bundle(model_dir, bundle_path).path.read_bytes()
            try:
                key = local_key.load_private(self._key_path)
            except ValueError as e:
                raise FailedPrecondition(
                    "no local-candidate signing key on this hub (roost certs init)"
                ) from e
            return bundle, local_key.sign(key, rec.model, version, bundle)

        bundle, signature = await asyncio.to_thread(build)
        return await self._stage(rec.model, bundle, signature)

    def _next_version(self, model: str, active: str) -> str:
        """``<active x.y.z>.<n>`` with the next free ``n`` among installed versions."""
        parse_version(active)
        base = ".".join([*active.split("."), "0", "0"][:3])
        taken = [0]
        for info in self._registry.versions(model):
            parts = info.version.split(".")
            if len(parts) == 4 and ".".join(parts[:3]) == base:
                taken.append(int(parts[3]))
        version = f"{base}.{max(taken) + 1}"
        # Not local_key.local_version: it checks len(parse_version(base)) == 3, which
        # parse_version's trailing-zero stripping breaks for e.g. "1.0.0".
        if not local_key.is_local_version(version):
            raise FailedPrecondition(f"cannot derive a local version from {active}")
        return version


def _receive(conn: Connection, timeout: float) -> tuple[Any, ...] | None:
    """One message from the child, None on timeout, ("eof",) once it is gone."""
    try:
        if not conn.poll(timeout):
            return None
        msg = conn.recv()
    except (EOFError, OSError):
        return ("eof",)
    return tuple(msg)


def write_candidate(
    model_dir: Path,
    *,
    base_dir: Path,
    version: str,
    job: JobRecord,
    plan: worker.Plan,
    epsilon: float,
    delta: float,
    accountant: str,
    metric: str,
) -> None:
    """The manifest and model card of a local candidate beside its exported ONNX.

    The manifest is the base version's with the new version, file hash and metrics: the
    input schema, labels and the public drift reference are unchanged (the candidate
    serves the same inputs). ``training_data_sha256`` is cleared: the household data has
    no public identity, and a hash of it would only help confirm a guess of it.
    """
    raw = json.loads((base_dir / MANIFEST_FILE).read_text())
    onnx_name = str(raw["file"])
    onnx_path = model_dir / onnx_name
    if not onnx_path.is_file():
        raise FailedPrecondition("the training run exported no model")
    digest = sha256_file(onnx_path)
    size = onnx_path.stat().st_size
    raw.update(
        version=version,
        sha256=digest,
        variants={"fp32": {"file": onnx_name, "sha256": digest, "size_bytes": size}},
        training_data_sha256="",
        metrics={
            "dp_epsilon": round(epsilon, 6),
            "dp_delta": delta,
            "dp_noise_multiplier": round(plan.noise_multiplier, 6),
            "dp_sample_rate": round(plan.sample_rate, 6),
            "dp_steps": float(job.steps_done or 0),
            "base_task_metric_before": round(job.metric_before, 6),
            "base_task_metric_after": round(job.metric_after, 6),
        },
        description=(
            f"{raw.get('description', '')} Personalized on this hub from {raw['version']}"
            f" with DP-SGD (epsilon {epsilon:.3g}, delta {delta:g})."
        ).strip(),
    )
    (model_dir / MANIFEST_FILE).write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")
    steps = f"{job.steps_done} of {plan.steps} planned steps"
    forgetting = (
        f"{job.metric_before:.4f} before, {job.metric_after:.4f} after ({metric})"
        if metric
        else "not measured (no public base-task data on this hub)"
    )
    card = f"""# Model card: `{raw["name"]}` {version} (local candidate)

Personalized on this hub from `{raw["name"]}` {".".join(version.split(".")[:3])} by the
personalization service (job `{job.job_id}`). It never left the hub and is a candidate
only: it serves after shadow/A-B and a promotion, like any update.

| | |
|---|---|
| served file | `{onnx_name}` (fp32), sha256 `{digest}` |
| training | DP-SGD (Opacus), distillation to the base model{", public replay" if metric else ""} |
| privacy | epsilon {epsilon:.4f} at delta {delta:g} ({accountant} accountant), per example |
| mechanism | noise {plan.noise_multiplier:.4f}, sample rate {plan.sample_rate:.4f}, {steps} |
| base-task accuracy | {forgetting} |

Privacy unit: one labelled example of the household. The training data stays on the hub;
see docs/personalization.md for what record-level DP does and does not protect.
"""
    (model_dir / "MODEL_CARD.md").write_text(card)


def next_page(token: str) -> int:
    if not token:
        return 0
    if not token.isdigit() or len(token) > 9:
        raise InvalidArgument("page_token: invalid")
    return int(token)


def page_size(size: int, maximum: int = 100) -> int:
    if size < 0 or size > maximum:
        raise InvalidArgument(f"page_size: must be between 0 and {maximum}")
    return size or maximum


__all__ = [
    "EXAMPLES",
    "SCOPE",
    "SUPPORTED",
    "UNSUPPORTED_MESSAGE",
    "JobManager",
    "JobRecord",
    "JobTable",
    "mechanism_epsilon",
]
