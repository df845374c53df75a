"""The job table: one durable row per fine-tuning job (SQLite, WAL, ``synchronous=FULL``).

A row holds names, states, counts, epsilons and the staged candidate's reference,
never a household value. Rows are replaced whole (:meth:`JobTable.put`); the job
manager is the only writer.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal

from services.kit import sqlite as kit_sqlite
from services.kit.clock import from_us, to_us
from services.kit.errors import NotFound

State = Literal["queued", "running", "succeeded", "failed", "cancelled"]


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
_SELECT: Final = f"SELECT {', '.join(_COLUMNS)} FROM jobs"  # noqa: S608 - fixed columns


def _row(rec: JobRecord) -> tuple[Any, ...]:
    return (
        rec.job_id,
        rec.model,
        rec.state,
        rec.progress,
        rec.epsilon,
        rec.message,
        to_us(rec.created_at),
        None if rec.finished_at is None else to_us(rec.finished_at),
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
        created_at=from_us(int(row[6])),
        finished_at=None if row[7] is None else from_us(int(row[7])),
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


class JobTable(kit_sqlite.SharedConnection):
    """The job table at ``path`` (created if missing). Thread-safe; one per process."""

    def __init__(self, path: Path) -> None:
        conn = kit_sqlite.connect_durable(path, what="job table", check_same_thread=False)
        try:
            kit_sqlite.migrate(
                conn,
                ((_SCHEMA, "CREATE INDEX IF NOT EXISTS jobs_created ON jobs(created_at_us)"),),
                what="job table",
            )
        except BaseException:
            conn.close()
            raise
        super().__init__(conn, what="job table")

    def put(self, rec: JobRecord) -> JobRecord:
        marks = ", ".join("?" for _ in _COLUMNS)
        with self._transaction("IMMEDIATE") as conn:
            conn.execute(
                f"INSERT OR REPLACE INTO jobs ({', '.join(_COLUMNS)}) VALUES ({marks})",  # noqa: S608 - fixed columns
                _row(rec),
            )
        return rec

    def get(self, job_id: str) -> JobRecord:
        with self._transaction("DEFERRED") as conn:
            row = conn.execute(_SELECT + " WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"job_id: no job {job_id!r}")
        return _record(row)

    def page(self, offset: int, limit: int) -> tuple[list[JobRecord], bool]:
        """Jobs newest first; the bool says whether more follow."""
        with self._transaction("DEFERRED") as conn:
            rows = conn.execute(
                _SELECT + " ORDER BY created_at_us DESC, rowid DESC LIMIT ? OFFSET ?",
                (limit + 1, offset),
            ).fetchall()
        return [_record(r) for r in rows[:limit]], len(rows) > limit

    def unfinished(self) -> list[JobRecord]:
        with self._transaction("DEFERRED") as conn:
            rows = conn.execute(
                _SELECT + " WHERE state IN ('queued', 'running') ORDER BY created_at_us"
            ).fetchall()
        return [_record(r) for r in rows]


__all__ = ["JobRecord", "JobTable", "State"]
