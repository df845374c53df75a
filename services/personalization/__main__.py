"""``python -m services.personalization``: the personalization service process.

Holds the household's example store, the privacy ledger and the job table (all in
``data_dir``), reads the model registry (read-only), reads labelled decisions from the
audit service and appends the ledger's privacy records to it (checking the ledger
against them at start and before every run), stages signed local candidates with the
update service and scores model versions against the stored labels with the inference
service. Training runs in a child process per job (``services.personalization.worker``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

from roost.audit.v1 import audit_service_pb2_grpc as audit_grpc
from roost.inference.v1 import inference_service_pb2_grpc as inf_grpc
from roost.personalization.v1 import personalization_service_pb2 as pb
from roost.personalization.v1 import personalization_service_pb2_grpc as pb_grpc
from roost.update.v1 import update_service_pb2_grpc as update_grpc
from services.kit.app import App
from services.kit.auth import Role
from services.kit.certs import LOCAL_CANDIDATE_KEY
from services.kit.config import load_config
from services.kit.errors import RoostError
from services.modelstore.reader import RegistryReader
from services.personalization.config import PersonalizationConfig
from services.personalization.fleet_round import FleetRounds
from services.personalization.job_manager import JobManager
from services.personalization.job_table import JobTable
from services.personalization.learning_mode import FILE_NAME, LearningMode
from services.personalization.ledger import LedgerUnreadable, PrivacyLedger, Recorder
from services.personalization.ledger_guard import REBUILD_ADVICE, LedgerGuard
from services.personalization.ledger_records import BudgetPolicy
from services.personalization.metrics import EXAMPLES
from services.personalization.peer_calls import (
    audit_decisions,
    inference_predictor,
    privacy_recorder,
    privacy_records,
    update_stager,
)
from services.personalization.servicer import POLICY, PersonalizationServicer
from services.personalization.store import ExampleStore

logger = logging.getLogger("services.personalization")


async def run_retention(
    store: ExampleStore,
    manager: JobManager,
    ledger: PrivacyLedger,
    days: float,
    interval_seconds: float,
) -> None:
    """Deletes examples past retention now and then every ``interval_seconds``, by the
    ledger's time (a clock set back keeps nothing longer); skips a pass while a job runs
    (it reads a pinned set of rows)."""
    seen: set[str] = set()
    while True:
        try:
            if not manager.busy:
                now = await asyncio.to_thread(ledger.latest_time)
                cutoff = now - timedelta(days=days)
                await asyncio.to_thread(store.prune, cutoff)
                counts = await asyncio.to_thread(store.counts)
                seen |= set(counts)
                for model in seen:
                    EXAMPLES.labels(model).set(counts.get(model, 0))
        except Exception:
            logger.exception("example retention failed; retrying in %.0f s", interval_seconds)
        await asyncio.sleep(interval_seconds)


def open_ledger(path: Path, policy: BudgetPolicy, recorder: Recorder) -> PrivacyLedger:
    """The ledger at ``path``; an unreadable file (e.g. its header overwritten) is set
    aside and an empty ledger opened instead, which the audit cross-check then finds
    short of the audit log's records: training is refused until it is rebuilt."""
    try:
        return PrivacyLedger.open(path, policy, recorder=recorder)
    except LedgerUnreadable as e:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        for suffix in ("", "-wal", "-shm"):
            side = path.with_name(path.name + suffix)
            if side.exists():
                side.replace(path.with_name(f"{path.name}.unreadable-{stamp}{suffix}"))
        logger.error("%s; set aside as %s.unreadable-%s", e, path.name, stamp)
        return PrivacyLedger.open(path, policy, recorder=recorder)


async def setup(config: PersonalizationConfig, app: App) -> None:
    """The example store, the ledger, the job table, the channels to audit, update and
    inference, the job manager and the retention job, and the servicer."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    store = app.closing(await asyncio.to_thread(ExampleStore.open, config.data_dir / "examples.db"))
    policy = BudgetPolicy(
        epsilon=config.epsilon_per_period,
        delta=config.budget_delta,
        period_days=config.period_days,
        accountant="prv" if config.accountant == "prv" else "rdp",
    )
    audit_channel = app.peer(Role.AUDIT, config.audit_target)
    audit = audit_grpc.AuditServiceStub(audit_channel)
    recorder = privacy_recorder(
        audit, config.hub_id, config.peer_deadline_seconds, asyncio.get_running_loop()
    )
    ledger = app.closing(
        await asyncio.to_thread(open_ledger, config.data_dir / "ledger.db", policy, recorder)
    )
    guard = LedgerGuard(ledger, privacy_records(audit, config.peer_deadline_seconds))
    job_table = app.closing(await asyncio.to_thread(JobTable, config.data_dir / "jobs.db"))
    update_channel = app.peer(Role.UPDATE, config.update_target)
    inference_channel = app.peer(Role.INFERENCE, config.inference_target)
    registry = RegistryReader(config.registry_root)
    manager = app.closing(
        JobManager(
            config,
            store=store,
            ledger=ledger,
            jobs=job_table,
            registry=registry,
            stage=update_stager(update_grpc.UpdateServiceStub(update_channel)),
            signing_key_path=config.certs_dir / LOCAL_CANDIDATE_KEY,
            guard=guard,
        )
    )
    try:
        await guard.record_untrailed()
        await guard.check()
    except RoostError as e:  # logged; every run checks again and is refused meanwhile
        logger.error("privacy ledger check at start: %s (%s)", e, REBUILD_ADVICE)
    interrupted = await manager.recover()
    if interrupted:
        logger.warning("%d job(s) interrupted by a restart marked failed", len(interrupted))
    app.background(
        run_retention(
            store, manager, ledger, config.retention_days, config.retention_interval_seconds
        ),
        name="personalization-retention",
    )
    app.register(
        pb.DESCRIPTOR.services_by_name["PersonalizationService"],
        PersonalizationServicer(
            manager=manager,
            store=store,
            ledger=ledger,
            job_table=job_table,
            decisions=audit_decisions(audit, config.peer_deadline_seconds),
            max_examples_per_request=config.max_examples_per_request,
            learning_mode=await asyncio.to_thread(LearningMode, config.data_dir / FILE_NAME),
            predict=inference_predictor(
                inf_grpc.InferenceServiceStub(inference_channel), config.peer_deadline_seconds
            ),
            fleet=FleetRounds(
                config,
                manager=manager,
                store=store,
                ledger=ledger,
                registry=registry,
            ),
        ),
        pb_grpc.add_PersonalizationServiceServicer_to_server,
        POLICY,
    )


def main() -> None:
    config = load_config(PersonalizationConfig, "personalization")
    App(config, Role.PERSONALIZATION, functools.partial(setup, config)).run()


if __name__ == "__main__":
    main()
