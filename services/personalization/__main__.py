"""``python -m services.personalization``: the personalization service process.

Holds the household's example store, the privacy ledger and the job table (all in
``data_dir``), reads the model registry (read-only), reads labelled decisions from the
audit service, stages signed local candidates with the update service and scores model
versions against the stored labels with the inference service. Training
runs in a child process per job (``services.personalization.worker``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from roost.audit.v1 import audit_service_pb2_grpc as audit_grpc
from roost.inference.v1 import inference_service_pb2_grpc as inf_grpc
from roost.personalization.v1 import personalization_service_pb2 as pb
from roost.personalization.v1 import personalization_service_pb2_grpc as pb_grpc
from roost.update.v1 import update_service_pb2_grpc as update_grpc
from services.kit.auth import Policy, Role
from services.kit.certs import LOCAL_CANDIDATE_KEY
from services.kit.client import aio_channel
from services.kit.config import load_config
from services.kit.server import Registration, configure_process, run_service
from services.modelstore.registry import Registry
from services.personalization.config import PersonalizationConfig
from services.personalization.job_manager import JobManager
from services.personalization.job_table import JobTable
from services.personalization.ledger import PrivacyLedger
from services.personalization.ledger_records import BudgetPolicy
from services.personalization.metrics import EXAMPLES
from services.personalization.peer_calls import (
    audit_decisions,
    inference_predictor,
    update_stager,
)
from services.personalization.servicer import POLICY, PersonalizationServicer
from services.personalization.store import ExampleStore

logger = logging.getLogger("services.personalization")


async def run_retention(
    store: ExampleStore, manager: JobManager, days: float, interval_seconds: float
) -> None:
    """Deletes examples past retention now and then every ``interval_seconds``; skips a
    pass while a job runs (it reads a pinned set of rows)."""
    seen: set[str] = set()
    while True:
        try:
            if not manager.busy:
                cutoff = datetime.now(UTC) - timedelta(days=days)
                await asyncio.to_thread(store.prune, cutoff)
                counts = await asyncio.to_thread(store.counts)
                seen |= set(counts)
                for model in seen:
                    EXAMPLES.labels(model).set(counts.get(model, 0))
        except Exception:
            logger.exception("example retention failed; retrying in %.0f s", interval_seconds)
        await asyncio.sleep(interval_seconds)


def main() -> None:
    config = load_config(PersonalizationConfig, "personalization")
    # Opacus adds a handler to the root logger when it is imported, which would turn the
    # kit's logging.basicConfig into a no-op (and the level into WARNING): drop it first.
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    configure_process(config.log_level)
    background: list[asyncio.Task[None]] = []
    closers: list[object] = []
    manager: JobManager | None = None

    async def build() -> tuple[Sequence[Registration], Policy]:
        nonlocal manager
        config.data_dir.mkdir(parents=True, exist_ok=True)
        store = await asyncio.to_thread(ExampleStore.open, config.data_dir / "examples.db")
        policy = BudgetPolicy(
            epsilon=config.epsilon_per_period,
            delta=config.delta,
            period_days=config.period_days,
            accountant="prv" if config.accountant == "prv" else "rdp",
        )
        ledger = await asyncio.to_thread(PrivacyLedger.open, config.data_dir / "ledger.db", policy)
        job_table = await asyncio.to_thread(JobTable, config.data_dir / "jobs.db")
        closers.extend([store, ledger, job_table])
        audit_channel = aio_channel(
            config.audit_target,
            certs_dir=config.certs_dir,
            role=Role.PERSONALIZATION,
            server_role=Role.AUDIT,
        )
        update_channel = aio_channel(
            config.update_target,
            certs_dir=config.certs_dir,
            role=Role.PERSONALIZATION,
            server_role=Role.UPDATE,
        )
        inference_channel = aio_channel(
            config.inference_target,
            certs_dir=config.certs_dir,
            role=Role.PERSONALIZATION,
            server_role=Role.INFERENCE,
        )
        closers.extend([audit_channel, update_channel, inference_channel])
        manager = JobManager(
            config,
            store=store,
            ledger=ledger,
            jobs=job_table,
            registry=Registry(config.registry_root),
            stage=update_stager(update_grpc.UpdateServiceStub(update_channel)),
            signing_key_path=config.certs_dir / LOCAL_CANDIDATE_KEY,
        )
        interrupted = await manager.recover()
        if interrupted:
            logger.warning("%d job(s) interrupted by a restart marked failed", len(interrupted))
        servicer = PersonalizationServicer(
            manager=manager,
            store=store,
            ledger=ledger,
            job_table=job_table,
            decisions=audit_decisions(
                audit_grpc.AuditServiceStub(audit_channel), config.peer_deadline_seconds
            ),
            max_examples_per_request=config.max_examples_per_request,
            predict=inference_predictor(
                inf_grpc.InferenceServiceStub(inference_channel), config.peer_deadline_seconds
            ),
        )
        background.append(
            asyncio.create_task(
                run_retention(
                    store, manager, config.retention_days, config.retention_interval_seconds
                ),
                name="personalization-retention",
            )
        )
        name = pb.DESCRIPTOR.services_by_name["PersonalizationService"].full_name
        reg = Registration(
            name, lambda s: pb_grpc.add_PersonalizationServiceServicer_to_server(servicer, s)
        )
        return [reg], POLICY

    async def on_stop() -> None:
        for task in background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if manager is not None:
            await manager.close()
        for closer in closers:
            result = closer.close()  # type: ignore[attr-defined]
            if asyncio.iscoroutine(result):
                await result

    asyncio.run(run_service(config, Role.PERSONALIZATION, build, on_stop))


if __name__ == "__main__":
    main()
