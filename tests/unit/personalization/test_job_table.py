"""The job table: records round-trip exactly (microsecond times, optional fields), pages
newest first, lists the unfinished jobs, survives a reopen and refuses use once closed."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.kit.errors import FailedPrecondition, NotFound
from services.personalization.job_table import JobRecord, JobTable

T0 = datetime(2026, 11, 1, 12, 0, 0, 123456, tzinfo=UTC)


def job(i: int, **changes: object) -> JobRecord:
    rec = JobRecord(
        job_id=f"job-{i}",
        model="occupancy",
        state="queued",
        progress=0.0,
        epsilon=0.0,
        message="",
        created_at=T0 + timedelta(minutes=i),
        finished_at=None,
        metric_before=0.0,
        metric_after=0.0,
        reservation_id=f"r{i}",
        steps_planned=40,
        steps_done=None,
        started=False,
    )
    return replace(rec, **changes)  # type: ignore[arg-type]


def test_records_round_trip_and_survive_a_reopen(tmp_path: Path) -> None:
    done = job(
        1,
        state="succeeded",
        progress=1.0,
        epsilon=0.75,
        message="candidate 1.0.0.1 staged",
        finished_at=T0 + timedelta(seconds=90, microseconds=7),
        metric_before=0.91,
        metric_after=0.9,
        steps_done=38,
        started=True,
        candidate_name="occupancy",
        candidate_version="1.0.0.1",
        candidate_sha256="ab" * 32,
    )
    with JobTable(tmp_path / "jobs.db") as table:
        assert table.put(job(0)) == job(0)
        table.put(done)
        assert table.get("job-0") == job(0)
        assert table.get("job-1") == done
    with JobTable(tmp_path / "jobs.db") as table:
        assert table.get("job-1") == done
        with pytest.raises(NotFound, match="job_id"):
            table.get("job-9")
    conn = sqlite3.connect(tmp_path / "jobs.db")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_pages_are_newest_first_and_say_whether_more_follow(tmp_path: Path) -> None:
    with JobTable(tmp_path / "jobs.db") as table:
        for i in range(5):
            table.put(job(i))
        first, more = table.page(0, 2)
        assert [r.job_id for r in first] == ["job-4", "job-3"]
        assert more
        last, more = table.page(4, 2)
        assert [r.job_id for r in last] == ["job-0"]
        assert not more
        assert table.page(5, 2) == ([], False)


def test_unfinished_jobs_are_the_queued_and_running_ones_oldest_first(tmp_path: Path) -> None:
    with JobTable(tmp_path / "jobs.db") as table:
        table.put(job(2, state="running"))
        table.put(job(0))
        table.put(job(1, state="failed"))
        table.put(job(3, state="succeeded"))
        assert [r.job_id for r in table.unfinished()] == ["job-0", "job-2"]
        # A put replaces the whole record.
        table.put(job(2, state="failed", message="stopped"))
        assert [r.job_id for r in table.unfinished()] == ["job-0"]


def test_a_closed_table_is_a_failed_precondition(tmp_path: Path) -> None:
    table = JobTable(tmp_path / "jobs.db")
    table.close()
    table.close()  # idempotent
    with pytest.raises(FailedPrecondition, match="job table: closed"):
        table.get("job-0")
    with pytest.raises(FailedPrecondition, match="job table: closed"):
        table.put(job(0))
