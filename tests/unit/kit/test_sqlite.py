"""The one way to open a durable SQLite database and migrate its schema."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest

from services.kit import sqlite as kit_sqlite
from services.kit.errors import FailedPrecondition

MIGRATIONS: tuple[tuple[kit_sqlite.Step, ...], ...] = (
    ("CREATE TABLE a (x INTEGER)",),
    ("ALTER TABLE a ADD COLUMN y TEXT", lambda c: c.execute("INSERT INTO a VALUES (1, 'one')")),
)


def test_durable_settings_private_file_and_stepwise_migrations(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "db.sqlite"
    conn = kit_sqlite.connect_durable(path, what="test db", private=True)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert kit_sqlite.migrate(conn, MIGRATIONS[:1], what="test db") == 1
    assert kit_sqlite.migrate(conn, MIGRATIONS, what="test db") == 2
    assert kit_sqlite.migrate(conn, MIGRATIONS, what="test db") == 2  # idempotent
    assert conn.execute("SELECT x, y FROM a").fetchall() == [(1, "one")]
    conn.close()


def test_a_newer_database_is_refused_and_a_failed_step_rolls_back(tmp_path: Path) -> None:
    conn = kit_sqlite.connect_durable(tmp_path / "db", what="test db")
    kit_sqlite.migrate(conn, MIGRATIONS, what="test db")
    with pytest.raises(FailedPrecondition, match="test db: schema version 2 is newer"):
        kit_sqlite.migrate(conn, MIGRATIONS[:1], what="test db")
    broken = (*MIGRATIONS, ("CREATE TABLE b (z)", "NOT SQL"))
    with pytest.raises(sqlite3.OperationalError):
        kit_sqlite.migrate(conn, broken, what="test db")
    assert kit_sqlite.user_version(conn) == 2
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'b'").fetchone() is None
    conn.close()
