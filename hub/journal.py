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

While a restarted hub catches up (:mod:`hub.catchup`), the readings of its clean live
session are journaled too (``kind`` LIVE, with the marker they follow), decided under
the same discipline, and the persistent session's copy of one, once matched, is a row
of its own (COPY, linked to the live row, decided when the live row is): the rows other
than LIVE are the persistent session's order, which the exact windows are replayed in.
A live row is kept, decided, until its copy is matched (whatever ``history``), so that
a hub killed while catching up recognises the copies on the next start
(:meth:`Journal.recover`).

The journal is written with ``synchronous = NORMAL``: a commit survives a crash of the
hub (kill -9, OOM) without an fsync per reading; a power loss may lose the last
moments, as it may the broker's own store. Errors are the caller's to count: the hub
then acknowledges readings as it takes them (the behaviour without a journal).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import IntEnum
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
    (
        "ALTER TABLE readings ADD COLUMN kind INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE readings ADD COLUMN link INTEGER",
        "ALTER TABLE readings ADD COLUMN marker TEXT",
        "CREATE INDEX readings_link ON readings (link) WHERE link IS NOT NULL",
    ),
)
# Old decided readings are pruned after this many appends.
PRUNE_EVERY = 1_000


class Kind(IntEnum):
    READING = 0  # taken from the persistent session
    LIVE = 1  # taken from the live session while catching up
    COPY = 2  # the persistent session's copy of a LIVE row (``link``)
    MARKER = 3  # the persistent session read this catch-up marker
    VOID = 4  # a LIVE row not decided when the hub stopped: its copy is decided instead


@dataclass(frozen=True)
class Entry:
    journal_id: int
    topic: str
    payload: bytes
    decided: bool
    kind: Kind = Kind.READING
    link: int = 0  # COPY: the LIVE row
    marker: str = ""  # LIVE, VOID, MARKER: the catch-up marker
    matched: bool = False  # LIVE, VOID: its copy was taken


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
        # Live rows not yet decided (their copy is decided with them).
        self._live: set[int] = set()
        self._prune()

    def entries(self) -> Iterator[Entry]:
        """What a restart replays, oldest first: the undecided readings and the newest
        ``history`` decided ones."""
        rows = self._db.execute(
            "SELECT id, topic, payload, decided, kind, link, marker, EXISTS "
            "(SELECT 1 FROM readings c WHERE c.link = r.id) FROM readings r ORDER BY id"
        ).fetchall()
        for rid, topic, payload, decided, kind, link, marker, matched in rows:
            yield Entry(
                int(rid),
                str(topic),
                bytes(payload),
                bool(decided),
                Kind(kind),
                int(link or 0),
                str(marker or ""),
                bool(matched),
            )

    def recover(self) -> None:
        """On start, before the replay: a LIVE row not decided is decided through its
        copy instead (VOID): the copy is still at the broker, or it is a COPY row,
        undecided, which the replay decides again like any undecided reading."""
        self._begin()
        self._db.execute(
            "UPDATE readings SET kind = ?, decided = 1 WHERE kind = ? AND decided = 0",
            (Kind.VOID, Kind.LIVE),
        )
        self.commit()

    def append(
        self,
        topic: str,
        payload: bytes,
        *,
        kind: Kind = Kind.READING,
        link: int = 0,
        marker: str = "",
        decided: bool = False,
    ) -> int:
        """Journal a reading (durable at the next :meth:`commit`); its journal id.

        A COPY of a live row that is still open is decided when the live row is; of a
        decided one, at once (``decided``)."""
        self._begin()
        cur = self._db.execute(
            "INSERT INTO readings (topic, payload, kind, link, marker, decided) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (topic, payload, int(kind), link or None, marker or None, int(decided)),
        )
        self._appends += 1
        if kind == Kind.LIVE:
            self._live.add(int(cur.lastrowid or 0))
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

    def is_open(self, journal_id: int) -> bool:
        """Whether the reading still owes decisions (taken, not all settled)."""
        return journal_id in self._open

    def _owe(self, rid: int, n: int) -> None:
        owed = self._open.pop(rid, 0) + n
        if owed == 0:
            self._begin()
            if rid in self._live:  # a live reading's copy (if taken) is decided with it
                self._live.discard(rid)
                self._db.execute(
                    "UPDATE readings SET decided = 1 WHERE id = ? OR link = ?", (rid, rid)
                )
            else:
                self._db.execute("UPDATE readings SET decided = 1 WHERE id = ?", (rid,))
        else:
            self._open[rid] = owed

    def _begin(self) -> None:
        if not self._in_tx:
            self._db.execute("BEGIN")
            self._in_tx = True

    def _prune(self) -> None:
        """Keep the newest ``history`` decided readings (and every undecided one, and
        every live reading whose copy was not taken yet)."""
        self._begin()
        row = self._db.execute(
            "SELECT id FROM readings WHERE decided = 1 ORDER BY id DESC LIMIT 1 OFFSET ?",
            (self._history,),
        ).fetchone()
        if row is not None:
            self._db.execute(
                "DELETE FROM readings WHERE decided = 1 AND id <= ? AND NOT (kind IN (?, ?) "
                "AND NOT EXISTS (SELECT 1 FROM readings c WHERE c.link = readings.id))",
                (row[0], int(Kind.LIVE), int(Kind.VOID)),
            )
        self.commit()


JournalError = sqlite3.Error
