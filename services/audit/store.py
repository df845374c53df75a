"""Durable SQLite storage of the audit log (synchronous; one connection, one thread).

The tables and their migrations are in ``services.audit.schema``, the Merkle tree
kept beside the entries in ``services.audit.tree``, reads and pages of entries in
``services.audit.query``. Appends write entries, inputs, tree nodes and tree state in
ONE transaction; erasures (redaction, retention) erase the stored inputs and log
themselves in one transaction too. Each append transaction stamps its records with one
``logged_at``: the wall clock, or the previous one if the clock went back (a high-water
mark), so ``logged_at`` never decreases in leaf order. The writer runs with
``secure_delete`` so erased bytes are overwritten, not left in free pages.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final, TypeVar

from roost.audit.v1 import audit_service_pb2 as pb
from services.audit import erasure, query, schema, tree
from services.audit.compact_range import CompactRange
from services.audit.inserts import insert_rows
from services.audit.records import Appended, PreparedRecord, assign_rows, prepare
from services.kit import sqlite as kit_sqlite
from services.kit.errors import FailedPrecondition, InvalidArgument, NotFound

logger = logging.getLogger(__name__)

_R = TypeVar("_R")

# Ids looked up per `IN (...)` statement.
_LOOKUP_CHUNK: Final = 500


class AuditStore:
    """The audit log's SQLite store. Not thread-safe: use it from one thread only."""

    def __init__(
        self, conn: sqlite3.Connection, *, read_only: bool, clock: Callable[[], int] | None = None
    ) -> None:
        self._conn = conn
        self._read_only = read_only
        # Wall clock in microseconds since the epoch (injectable for tests).
        self._clock = clock or (lambda: time.time_ns() // 1000)
        # Bound variables per statement: 32766 since SQLite 3.32, 999 before.
        self._max_variables = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        self._tree = tree.SqliteTree(conn)
        # The tree edge written by the open write transaction, if any (see _write).
        self._pending_compact: CompactRange | None = None
        # The writer's tree edge, loaded once from tree_state (never recomputed).
        self._compact = self._load_tree()
        # The latest logged_at written: the next append never stamps an earlier one.
        row = conn.execute("SELECT logged_at_us FROM entries ORDER BY idx DESC LIMIT 1").fetchone()
        self._logged_hwm_us = 0 if row is None else int(row[0])

    @classmethod
    def open(
        cls, path: Path, *, read_only: bool = False, clock: Callable[[], int] | None = None
    ) -> AuditStore:
        """Opens (creating and migrating unless ``read_only``) the database at ``path``.

        Writers use WAL with ``synchronous=FULL``: a returned append survives power loss.
        A ``read_only`` store needs an already migrated database (open the writer first).
        """
        if read_only:
            # isolation_level=None: autocommit; transactions are explicit BEGIN/COMMIT.
            conn = sqlite3.connect(path, isolation_level=None)
        else:
            conn = kit_sqlite.connect_durable(path, what="audit database", busy_timeout_s=5.0)
        try:
            if read_only:
                conn.execute("PRAGMA busy_timeout = 5000")
                conn.execute("PRAGMA query_only = ON")
                if kit_sqlite.user_version(conn) != schema.SCHEMA_VERSION:
                    raise FailedPrecondition("audit database: not migrated; open the writer first")
            else:
                # Erased inputs are overwritten with zeros, not left in free pages.
                conn.execute("PRAGMA secure_delete = ON")
                # Truncate the WAL back to at most 64 MiB after checkpoints.
                conn.execute("PRAGMA journal_size_limit = 67108864")
                schema.migrate(conn)
        except BaseException:
            conn.close()
            raise
        store = cls(conn, read_only=read_only, clock=clock)
        logger.info(
            "audit store opened (%s, %d entries)",
            "read-only" if read_only else "writer",
            store.size(),
        )
        return store

    def close(self) -> None:
        self._conn.close()

    def size(self) -> int:
        """Number of entries, which is also the tree size (indexes are dense from 0)."""
        row = self._conn.execute("SELECT MAX(idx) FROM entries").fetchone()
        return 0 if row[0] is None else int(row[0]) + 1

    def tree_size(self) -> int:
        """Size of the committed tree (from ``tree_state``)."""
        return self._current().size

    def root(self, size: int | None = None) -> bytes:
        """Root hash of the tree of ``size`` leaves (default: the current tree)."""
        current = self._current()
        if size is None:
            return current.root()
        tree.check_size(size, current.size, "tree_size")
        return self._tree.root(size, current)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """RFC 9162 audit path of leaf ``index`` in the tree of ``size`` (default: current)."""
        current = self._current().size
        return self._tree.inclusion_proof(index, current if size is None else size, current)

    def consistency_proof(self, size1: int, size2: int | None = None) -> list[bytes]:
        """RFC 9162 consistency proof from tree ``size1`` to ``size2`` (default: current)."""
        current = self._current().size
        return self._tree.consistency_proof(size1, current if size2 is None else size2, current)

    def index_of(self, decision_id: str) -> int:
        """Leaf index of a logged decision; NotFound if it is not in the log."""
        if not decision_id:
            raise InvalidArgument("decision_id: required")
        row = self._conn.execute(
            "SELECT idx FROM entries WHERE decision_id = ?", (decision_id,)
        ).fetchone()
        if row is None:
            raise NotFound("decision_id: no such decision in the audit log")
        return int(row[0])

    def save_checkpoint(self, size: int, note: str) -> None:
        """Records a signed checkpoint note (writer only)."""
        if self._read_only:
            raise FailedPrecondition("audit store: opened read-only")
        self._conn.execute(
            "INSERT OR REPLACE INTO checkpoints (size, note, created_at_us) VALUES (?, ?, ?)",
            (size, note, time.time_ns() // 1000),
        )

    def latest_checkpoint(self) -> tuple[int, str] | None:
        """(size, note) of the latest recorded checkpoint, if any."""
        row = self._conn.execute(
            "SELECT size, note FROM checkpoints ORDER BY size DESC LIMIT 1"
        ).fetchone()
        return None if row is None else (int(row[0]), str(row[1]))

    def _current(self) -> CompactRange:
        """The tree edge: the writer's own copy, or re-read from tree_state by readers."""
        if self._read_only:
            return tree.load_state(self._conn)
        return self._compact

    def _load_tree(self) -> CompactRange:
        """Loads tree_state and checks it covers exactly the entries (one read snapshot)."""
        conn = self._conn
        conn.execute("BEGIN")
        try:
            compact = tree.load_state(conn)
            tree.check_entries(conn, compact)
        finally:
            conn.execute("COMMIT")
        return compact

    def append(self, decisions: Sequence[pb.Decision]) -> tuple[list[Appended], int]:
        """Validates all decisions, then appends them in one durable transaction.

        Idempotent by decision_id: an id already logged (or repeated within the batch)
        gets its existing index and leaf hash with ``already_logged`` and is not written.
        Returns results parallel to ``decisions`` and the tree size after the append.
        """
        results, tree_size = self.append_prepared([prepare(decisions)])
        return results[0], tree_size

    def append_prepared(
        self, batches: Sequence[Sequence[PreparedRecord]]
    ) -> tuple[list[list[Appended]], int]:
        """Appends several already validated batches in ONE transaction (group commit).

        Results are per batch, parallel to it. A decision_id appearing in an earlier
        batch of the same call counts as already logged for later ones.
        """
        flat = [rec for batch in batches for rec in batch]
        if not flat:
            return [[] for _ in batches], self.size()
        results = self._write(lambda: self._append_in_tx(flat))
        tree_size = self._compact.size
        logger.debug("audit append: %d records, tree size %d", len(flat), tree_size)
        out: list[list[Appended]] = []
        start = 0
        for batch in batches:
            out.append(results[start : start + len(batch)])
            start += len(batch)
        return out, tree_size

    def redact_inputs(self, decision_id: str, reason: str, now_us: int) -> tuple[int, int, bool]:
        """Deletes a decision's stored inputs and logs the deletion, in one transaction.

        Returns (index of the redaction entry, redacted_at_us, already redacted). The
        decision's leaf is untouched, so its proofs still verify. Redacting again is a
        no-op that returns the first redaction. NotFound for an unknown decision,
        FailedPrecondition when it has no stored inputs.
        """
        try:
            erasure.check_reason(reason)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        index = self.index_of(decision_id)

        def redact() -> tuple[int, int, bool]:
            input_idx, redacted_at_us, erased_by, record = self._conn.execute(
                "SELECT i.idx, i.redacted_at_us, i.erased_by, e.record FROM entries e"
                " LEFT JOIN inputs i ON i.idx = e.idx WHERE e.idx = ?",
                (index,),
            ).fetchone()
            if input_idx is None:
                raise FailedPrecondition(
                    "decision_id: this decision has no stored inputs to redact"
                )
            if redacted_at_us is not None:
                # Redacted before (erased_by is NULL only for v1/v2-era redactions).
                return int(-1 if erased_by is None else erased_by), int(redacted_at_us), True
            target = pb.Decision.FromString(record)
            entry = erasure.redaction_decision(target, reason, now_us)
            (result,) = self._append_in_tx(prepare([entry], "redaction", admin=True))
            self._conn.execute(
                "UPDATE inputs SET data = NULL, redacted_at_us = ?, erased_by = ? WHERE idx = ?",
                (now_us, result.index, index),
            )
            return int(result.index), now_us, False

        outcome = self._write(redact)
        if not outcome[2]:
            self._flush_wal()
            logger.info(
                "audit: redacted the stored inputs of entry %d (entry %d)", index, outcome[0]
            )
        return outcome

    def prune_inputs(
        self, cutoff_us: int, reason: str, hub_id: str, now_us: int, limit: int = 50_000
    ) -> tuple[int, int | None]:
        """Erases the stored inputs of up to ``limit`` decisions made before ``cutoff_us``.

        One transaction: the inputs go and one retention entry records the run. Returns
        (inputs pruned, index of the retention entry or None when nothing was due).
        """

        def prune() -> tuple[int, int | None]:
            due = [
                int(row[0])
                for row in self._conn.execute(
                    "SELECT i.idx FROM entries e JOIN inputs i ON i.idx = e.idx"
                    " WHERE e.decided_at_us < ? AND i.redacted_at_us IS NULL"
                    " ORDER BY e.idx LIMIT ?",
                    (cutoff_us, limit),
                )
            ]
            if not due:
                return 0, None
            entry = erasure.retention_decision(hub_id, len(due), cutoff_us, reason, now_us)
            (result,) = self._append_in_tx(prepare([entry], "retention", admin=True))
            self._conn.executemany(
                "UPDATE inputs SET data = NULL, redacted_at_us = ?, erased_by = ? WHERE idx = ?",
                [(now_us, result.index, idx) for idx in due],
            )
            return len(due), int(result.index)

        pruned, index = self._write(prune)
        if pruned:
            self._flush_wal()
            logger.info("audit retention: pruned %d stored inputs (entry %s)", pruned, index)
        return pruned, index

    def thin_checkpoints(self, keep_after_us: int) -> int:
        """Deletes checkpoints created before ``keep_after_us`` except the last of each UTC
        day (and never the latest one); returns how many were deleted."""
        day_us = 86_400_000_000

        def thin() -> int:
            cursor = self._conn.execute(
                "DELETE FROM checkpoints WHERE created_at_us < ?"
                " AND size NOT IN (SELECT MAX(size) FROM checkpoints GROUP BY created_at_us / ?)"
                " AND size != (SELECT MAX(size) FROM checkpoints)",
                (keep_after_us, day_us),
            )
            return int(cursor.rowcount)

        return self._write(thin)

    def _flush_wal(self) -> None:
        """Checkpoints and truncates the WAL so erased bytes leave it too (best effort: a
        reader in the middle of a transaction defers it to the next checkpoint)."""
        busy, _, _ = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            logger.debug("audit: WAL truncation deferred by an active reader")

    def _write(self, body: Callable[[], _R]) -> _R:
        """Runs ``body`` in one immediate (write) transaction; the tree edge it leaves in
        ``self._pending_compact`` becomes current only once the transaction commits."""
        if self._read_only:
            raise FailedPrecondition("audit store: opened read-only")
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        self._pending_compact = None
        try:
            result = body()
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._pending_compact = None
            raise
        if self._pending_compact is not None:
            self._compact = self._pending_compact
            self._pending_compact = None
        return result

    def _append_in_tx(self, flat: Sequence[PreparedRecord]) -> list[Appended]:
        """Inside ``_write``: appends the new records (entries, inputs, tree nodes, state)."""
        current = self._pending_compact or self._compact
        first_idx = self.size()
        if first_idx != current.size:
            raise FailedPrecondition(
                f"audit database: {first_idx} entries but tree size {current.size}"
            )
        # Fast path: assume no id is logged yet (retries are rare) and let the UNIQUE
        # index catch the exception; then redo the batch knowing which ids exist.
        conn = self._conn
        now_us = self._clock()
        stamp = self._logged_hwm_us = max(now_us, self._logged_hwm_us)
        conn.execute("SAVEPOINT append_fast")
        try:
            results, entry_rows, input_rows = assign_rows(flat, {}, first_idx, (now_us, stamp))
            insert_rows(conn, "entries", schema.ENTRY_COLUMNS, entry_rows)
        except sqlite3.IntegrityError:
            conn.execute("ROLLBACK TO append_fast")
            known = self._lookup({rec.decision_id for rec in flat})
            results, entry_rows, input_rows = assign_rows(flat, known, first_idx, (now_us, stamp))
            insert_rows(conn, "entries", schema.ENTRY_COLUMNS, entry_rows)
        finally:
            conn.execute("RELEASE append_fast")
        if not entry_rows:
            return results
        compact = current.copy()
        # Column 8 of an entry row is its leaf hash (ENTRY_COLUMNS order).
        nodes = tree.extend(compact, (row[8] for row in entry_rows))
        insert_rows(conn, "inputs", schema.INPUT_COLUMNS, input_rows)
        insert_rows(conn, "tree_nodes", "level, idx, hash", nodes)
        tree.save_state(self._conn, compact)
        self._pending_compact = compact
        return results

    def get(self, decision_id: str) -> pb.LogEntry:
        """The logged entry of ``decision_id`` (with its inputs unless redacted)."""
        return query.get_entry(self._conn, decision_id)

    def query(
        self,
        start_us: int | None,
        end_us: int | None,
        *,
        entity_id: str = "",
        model_name: str = "",
        model_version: str = "",
        action: str = "",
        page_size: int = 0,
        page_token: str = "",
        from_index: int | None = None,
        below_index: int | None = None,
        newest_first: bool = False,
    ) -> tuple[list[pb.LogEntry], str]:
        """Entries with ``start_us <= decided_at < end_us`` matching the filters, oldest first.

        ``None`` bounds are open; empty filters match all; ``from_index`` and
        ``below_index`` keep only leaf indexes in ``[from_index, below_index)`` (an export
        pins the tree size of its checkpoint, and a range export its leaf range). Returns
        the page and the token of the next page (``""`` when this is the last). With a
        time bound, the first page fixes the range of leaf indexes to scan, so later
        pages do not pick up entries appended in between. ``newest_first`` pages
        backwards from the end.
        """
        return query.query_entries(
            self._conn,
            start_us,
            end_us,
            entity_id=entity_id,
            model_name=model_name,
            model_version=model_version,
            action=action,
            page_size=page_size,
            page_token=page_token,
            from_index=from_index,
            below_index=below_index,
            newest_first=newest_first,
        )

    def logged_range(self, start_us: int | None, end_us: int | None, size: int) -> tuple[int, int]:
        """See :func:`services.audit.query.logged_index_range`."""
        return query.logged_index_range(self._conn, start_us, end_us, size)

    def record_at(self, index: int) -> bytes:
        """The record (leaf data) of leaf ``index``."""
        return query.record_at(self._conn, index)

    def _lookup(self, ids: set[str]) -> dict[str, tuple[int, bytes, bytes]]:
        """Existing (index, leaf hash, record) of the given decision ids already logged."""
        found: dict[str, tuple[int, bytes, bytes]] = {}
        id_list = list(ids)
        per_statement = min(_LOOKUP_CHUNK, self._max_variables)
        for start in range(0, len(id_list), per_statement):
            chunk = id_list[start : start + per_statement]
            marks = ",".join("?" * len(chunk))
            sql = (
                "SELECT decision_id, idx, leaf_hash, record FROM entries"  # noqa: S608
                f" WHERE decision_id IN ({marks})"
            )
            for decision_id, idx, digest, record in self._conn.execute(sql, chunk):
                found[decision_id] = (idx, digest, record)
        return found
