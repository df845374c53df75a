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
        if not self.hub_id:
            raise ValueError("audit.hub_id: required")
