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
