"""``python -m services.audit``: the audit service process."""

from __future__ import annotations

import asyncio
import functools
import logging

from roost.audit.v1 import audit_service_pb2 as pb
from roost.audit.v1 import audit_service_pb2_grpc as pb_grpc
from services.audit.checkpoint import NoteSigner, export_vkey, load_or_create_signer
from services.audit.config import AuditConfig
from services.audit.integrity import IntegrityChecker
from services.audit.latest_checkpoint import FILE_NAME as LATEST_FILE
from services.audit.latest_checkpoint import LatestCheckpoint
from services.audit.log import AuditLog
from services.audit.servicer import (
    LOG_SIZE,
    POLICY,
    AuditServicer,
    checkpoint_origin,
    run_checkpointer,
    run_retention,
)
from services.audit.witness_client import WitnessPool, parse_witnesses
from services.kit.app import App
from services.kit.auth import Role
from services.kit.config import load_config
from services.kit.files import write_atomic

logger = logging.getLogger("services.audit")

VKEY_FILE = "checkpoint.vkey"


def load_signer(config: AuditConfig) -> NoteSigner:
    """Loads (creating on first start) the checkpoint signer; publishes its verifier key
    in ``<data_dir>/checkpoint.vkey`` (public) and logs it."""
    signer = load_or_create_signer(
        config.data_dir / config.checkpoint_key_file, checkpoint_origin(config.hub_id)
    )
    vkey = export_vkey(signer)
    write_atomic(config.data_dir / VKEY_FILE, (vkey + "\n").encode("ascii"), 0o644)
    logger.info("audit checkpoint verifier key: %s", vkey)
    return signer


async def setup(config: AuditConfig, app: App) -> None:
    """The audit log, its checkpointer and retention jobs, and the servicer."""
    signer = await asyncio.to_thread(load_signer, config)
    # Next to the key, outside the database: refuses a database that forks the log.
    key_dir = (config.data_dir / config.checkpoint_key_file).parent
    latest = LatestCheckpoint(key_dir / LATEST_FILE, signer.verifier())
    log = app.closing(
        await AuditLog.open(
            config.data_dir / config.db_name,
            max_group_records=config.max_group_records,
            max_pending_records=config.max_pending_records,
            latest=latest,
        )
    )
    LOG_SIZE.set(await log.size())
    checker = app.closing(IntegrityChecker(config.data_dir / config.db_name, signer.verifier()))
    await asyncio.to_thread(checker.check_startup, config.integrity_tail_entries)
    app.background(
        checker.run(config.integrity_chunk_pause_seconds, config.integrity_pass_interval_seconds),
        name="audit-integrity",
    )
    pool = None
    if config.witnesses:
        pool = WitnessPool(
            log,
            signer,
            parse_witnesses(config.witnesses),
            timeout_seconds=config.witness_timeout_seconds,
            max_backoff_seconds=config.witness_max_backoff_seconds,
        )
        app.background(pool.run(), name="audit-witnesses")
        pool.notify()
    app.background(
        run_checkpointer(
            log,
            signer,
            config.checkpoint_interval_seconds,
            on_signed=None if pool is None else pool.notify,
        ),
        name="audit-checkpointer",
    )
    app.background(
        run_retention(
            log,
            hub_id=config.hub_id,
            inputs_retention_days=config.inputs_retention_days,
            checkpoint_keep_days=config.checkpoint_keep_days,
            interval_seconds=config.retention_interval_seconds,
        ),
        name="audit-retention",
    )
    app.register(
        pb.DESCRIPTOR.services_by_name["AuditService"],
        AuditServicer(log, config.max_append_batch, signer, pool, config.witness_wait_seconds),
        pb_grpc.add_AuditServiceServicer_to_server,
        POLICY,
    )


def main() -> None:
    config = load_config(AuditConfig, "audit")
    App(config, Role.AUDIT, functools.partial(setup, config)).run()


if __name__ == "__main__":
    main()
