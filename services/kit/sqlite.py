"""Durable SQLite databases, one way for every service (audit log, ledger, stores, jobs).

``connect_durable`` opens a database in WAL mode with ``synchronous=FULL`` (a committed
transaction survives power loss) and a busy timeout; ``migrate`` brings its schema to
the newest version, one transaction per version, recorded in ``PRAGMA user_version``.
Migrations read the version inside their write transaction, so processes that open the
same file at once do not run a step twice.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

from services.kit.errors import FailedPrecondition, Unavailable

logger = logging.getLogger(__name__)

# A migration step: an SQL statement, or a function run inside the step's transaction.
Step = str | Callable[[sqlite3.Connection], None]


def connect_durable(
    path: Path,
    *,
    what: str,
    busy_timeout_s: float = 30.0,
    private: bool = False,
    check_same_thread: bool = True,
) -> sqlite3.Connection:
    """An autocommit connection (transactions are explicit) to a WAL, ``synchronous=FULL``
    database at ``path``; FailedPrecondition naming ``what`` if WAL is unavailable.
    ``private`` creates the file with mode 0600 (household data)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if private:
        path.touch(mode=0o600, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=check_same_thread)
    try:
        conn.execute(f"PRAGMA busy_timeout = {max(0, int(busy_timeout_s * 1000)):d}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise FailedPrecondition(f"{what}: WAL journal mode unavailable")
        conn.execute("PRAGMA synchronous = FULL")
    except BaseException:
        conn.close()
        raise
    return conn


def user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, migrations: Sequence[Sequence[Step]], *, what: str) -> int:
    """Applies ``migrations[v]`` for every version ``v`` from the database's to the
    newest (``len(migrations)``), each in one immediate transaction; returns the version.
    FailedPrecondition if the database is newer than this code."""
    newest = len(migrations)
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            current = user_version(conn)  # inside the write transaction: race-safe
            if current > newest:
                raise FailedPrecondition(
                    f"{what}: schema version {current} is newer than supported {newest}"
                )
            if current == newest:
                conn.execute("COMMIT")
                return newest
            for step in migrations[current]:
                if isinstance(step, str):
                    conn.execute(step)
                else:
                    step(conn)
            conn.execute(f"PRAGMA user_version = {current + 1:d}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        logger.info("%s migrated to schema version %d", what, current + 1)


class SharedConnection:
    """One connection that the threads of a process share, taking turns on a lock (other
    processes are serialized by SQLite's write lock); closable, and a context manager."""

    def __init__(self, conn: sqlite3.Connection, *, what: str) -> None:
        self._conn: sqlite3.Connection | None = conn
        self._lock = threading.RLock()
        self._what = what

    @contextmanager
    def _transaction(self, mode: Literal["IMMEDIATE", "DEFERRED"]) -> Iterator[sqlite3.Connection]:
        """One transaction under the lock: committed if the block returns, rolled back if
        it raises; a busy or locked database is Unavailable (retry)."""
        with self._lock:
            conn = self._conn
            if conn is None:
                raise FailedPrecondition(f"{self._what}: closed")
            try:
                conn.execute(f"BEGIN {mode}")
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as e:
                if "locked" in str(e) or "busy" in str(e):
                    raise Unavailable(f"{self._what}: database busy; retry") from e
                raise

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
