"""Configuration of the audit service (section ``[audit]``, env ``ROOST_AUDIT_*``)."""

from __future__ import annotations

from dataclasses import dataclass

from services.kit.config import ServiceConfig

DEFAULT_PORT = 50052


@dataclass(frozen=True)
class AuditConfig(ServiceConfig):
    port: int = DEFAULT_PORT
    # The log lives in <data_dir>/audit.db (SQLite, WAL, synchronous=FULL).
    db_name: str = "audit.db"
    # Bounds of one group commit and of the queue in front of it.
    max_group_records: int = 10_000
    max_pending_records: int = 200_000
    # Largest AppendDecisions request, in decisions.
    max_append_batch: int = 5_000
    # Checkpoints: origin (and key name) is f"roost.local/hub/{hub_id}"; the Ed25519
    # signer key lives in <data_dir>/<checkpoint_key_file> (created on first start, 0600)
    # and its public verifier key is written to <data_dir>/checkpoint.vkey.
    hub_id: str = "local"
    checkpoint_key_file: str = "checkpoint.key"
    # A background task re-signs the checkpoint this often if the tree grew.
    checkpoint_interval_seconds: float = 60.0
    # Witnesses (C2SP tlog-witness, e.g. `roost audit witness` on another machine) that
    # cosign each new checkpoint: "<URL prefix> <witness verifier key>" each (docs/audit.md).
    witnesses: tuple[str, ...] = ()
    # One add-checkpoint call's timeout; failed witnesses are retried with exponential
    # backoff up to witness_max_backoff_seconds.
    witness_timeout_seconds: float = 5.0
    witness_max_backoff_seconds: float = 300.0
    # GetCheckpoint and exports wait this long for the cosignatures of a new checkpoint.
    witness_wait_seconds: float = 3.0

    # Integrity at rest (services/audit/integrity.py): the newest entries checked before
    # serving; then all of them in the background, 4,096 at a time, this far apart, one
    # whole pass every integrity_pass_interval_seconds.
    integrity_tail_entries: int = 65_536
    integrity_chunk_pause_seconds: float = 0.25
    integrity_pass_interval_seconds: float = 3600.0

    # Retention of stored inputs (the household values behind each decision): older
    # ones are erased (their digests and every proof stay); 0 keeps them forever.
    inputs_retention_days: float = 30.0
    # Checkpoints older than this are thinned to the last one of each day.
    checkpoint_keep_days: float = 7.0
    # How often the retention job runs.
    retention_interval_seconds: float = 3600.0

    def __post_init__(self) -> None:
        if self.inputs_retention_days < 0:
            raise ValueError("audit.inputs_retention_days: must be >= 0 (0 keeps inputs)")
        if self.checkpoint_keep_days < 0:
            raise ValueError("audit.checkpoint_keep_days: must be >= 0")
        if not self.retention_interval_seconds > 0:
            raise ValueError("audit.retention_interval_seconds: must be > 0")
        if not self.checkpoint_interval_seconds > 0:
            raise ValueError("audit.checkpoint_interval_seconds: must be > 0")
        if self.witness_timeout_seconds <= 0 or self.witness_wait_seconds < 0:
            raise ValueError("audit.witness_timeout_seconds must be > 0, wait_seconds >= 0")
        if not self.hub_id:
            raise ValueError("audit.hub_id: required")
