"""The hub's readings journal: what it took from the broker, kept until it is decided.

A QoS 1 reading is acknowledged to the broker only once it is in this journal (SQLite
in the hub's ``data_dir``), so a hub killed at any moment loses nothing it took:

* a reading is marked *decided* once the audit log acknowledged its decisions, before
  they are published (or once it turned out to need none: an incomplete window, a
  duplicate, a bad value). On start the hub decides the undecided ones again, in order;
* the newest ``history`` decided readings stay, and on start they are replayed into
  the feature windows only (no decision), so the windows are as full as before the
  kill and the first readings after a restart decide like any other.

A decision is made once and never lost on its way out: when its reading is marked
decided, the message is kept in the journal's *outbox* (same transaction) until the
broker acknowledged it; on start the hub publishes what the outbox still holds (the
same decision again, at worst: same ``decision_id``). A kill between the audit
acknowledgement and the mark decides the reading again (the first decision stays
recorded, never published).

The journal is written with ``synchronous = NORMAL``: a commit survives a crash of the
hub (kill -9, OOM) without an fsync per reading; a power loss may lose the last
moments, as it may the broker's own store. Errors are the caller's to count: the hub
then acknowledges readings as it takes them (the behaviour without a journal).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from hub.pipeline import Outgoing
from services.kit.sqlite import connect_durable, migrate

MIGRATIONS = (
    (
        "CREATE TABLE readings (id INTEGER PRIMARY KEY, topic TEXT NOT NULL, "
        "payload BLOB NOT NULL, decided INTEGER NOT NULL DEFAULT 0)",
        "CREATE INDEX readings_decided ON readings (decided, id)",
        "CREATE TABLE outbox (decision_id TEXT PRIMARY KEY, topic TEXT NOT NULL, "
        "payload BLOB NOT NULL)",
    ),
)
# Old decided readings are pruned after this many appends.
PRUNE_EVERY = 1_000


@dataclass(frozen=True)
class Entry:
    journal_id: int
    topic: str
    payload: bytes
    decided: bool


class Journal:
    """Readings in arrival order, each open until its decisions settle (``settled``)."""

    def __init__(self, path: Path, *, history: int) -> None:
        if history < 0:
            raise ValueError("history must be >= 0")
        self._history = history
        self._db = connect_durable(path, what="hub readings journal", private=True)
        # A crash of the hub, not of the machine, is what this journal is for.
        self._db.execute("PRAGMA synchronous = NORMAL")
        migrate(self._db, MIGRATIONS, what="hub readings journal")
        self._in_tx = False
        self._appends = 0
        # Decisions still owed per open reading (negative while settlements run ahead).
        self._open: dict[int, int] = {}
        self._prune()

    def entries(self) -> Iterator[Entry]:
        """What a restart replays, oldest first: the undecided readings and the newest
        ``history`` decided ones."""
        rows = self._db.execute(
            "SELECT id, topic, payload, decided FROM readings ORDER BY id"
        ).fetchall()
        for rid, topic, payload, decided in rows:
            yield Entry(int(rid), str(topic), bytes(payload), bool(decided))

    def append(self, topic: str, payload: bytes) -> int:
        """Journal a reading (durable at the next :meth:`commit`); its journal id."""
        self._begin()
        cur = self._db.execute(
            "INSERT INTO readings (topic, payload) VALUES (?, ?)", (topic, payload)
        )
        self._appends += 1
        if self._appends % PRUNE_EVERY == 0:
            self._prune()
        assert cur.lastrowid is not None
        return int(cur.lastrowid)

    def taken(self, journal_id: int, decisions: int) -> None:
        """The reading was handled and owes ``decisions`` (0: decided already)."""
        self._owe(journal_id, decisions)

    def settled(self, journal_ids: Iterable[int], outgoing: Iterable[Outgoing] = ()) -> None:
        """One decision each of these readings is recorded (or will never be), and
        ``outgoing`` is to be published; durable at once (before it is published)."""
        for rid in journal_ids:
            if rid > 0:
                self._owe(rid, -1)
        rows = [(o.decision_id, o.topic, o.payload) for o in outgoing]
        if rows:
            self._begin()
            self._db.executemany("INSERT OR REPLACE INTO outbox VALUES (?, ?, ?)", rows)
        self.commit()

    def published(self, outgoing: Iterable[Outgoing]) -> None:
        """The broker acknowledged these (durable with the next commit)."""
        ids = [(o.decision_id,) for o in outgoing]
        if ids:
            self._begin()
            self._db.executemany("DELETE FROM outbox WHERE decision_id = ?", ids)

    def outbox(self) -> list[Outgoing]:
        """Decisions recorded but maybe not published when the hub stopped."""
        rows = self._db.execute("SELECT decision_id, topic, payload FROM outbox").fetchall()
        return [Outgoing(str(t), bytes(p), str(d)) for d, t, p in rows]

    def commit(self) -> None:
        if self._in_tx:
            self._in_tx = False
            self._db.execute("COMMIT")

    def close(self) -> None:
        self.commit()
        self._db.close()

    @property
    def open_readings(self) -> int:
        return len(self._open)

    def _owe(self, rid: int, n: int) -> None:
        owed = self._open.pop(rid, 0) + n
        if owed == 0:
            self._begin()
            self._db.execute("UPDATE readings SET decided = 1 WHERE id = ?", (rid,))
        else:
            self._open[rid] = owed

    def _begin(self) -> None:
        if not self._in_tx:
            self._db.execute("BEGIN")
            self._in_tx = True

    def _prune(self) -> None:
        """Keep the newest ``history`` decided readings (and every undecided one)."""
        self._begin()
        row = self._db.execute(
            "SELECT id FROM readings WHERE decided = 1 ORDER BY id DESC LIMIT 1 OFFSET ?",
            (self._history,),
        ).fetchone()
        if row is not None:
            self._db.execute("DELETE FROM readings WHERE decided = 1 AND id <= ?", (row[0],))
        self.commit()


JournalError = sqlite3.Error
