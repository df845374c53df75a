"""The audit log's Merkle tree kept in SQLite next to the entries (schema v2).

* ``tree_nodes(level, idx, hash)``: the hash of every completed perfect subtree of
  ``2**level`` leaves with ``level >= STORED_MIN_LEVEL`` (4: subtrees of 16 leaves and
  up), starting at leaf ``idx * 2**level``. Smaller subtrees are recomputed from their
  leaves (``entries.leaf_hash``, one range read of at most 8 leaves, at most 7 hashes) when a proof
  needs them: that keeps about one tree row per 8 leaves instead of one per leaf, which
  is most of the append cost of the tree, for a few microseconds per proof.
* ``tree_state``: one row, the tree size and the serialized :class:`CompactRange` of
  ``[0, size)``, so opening the store never rehashes the log.
* ``checkpoints(size, note, created_at_us)``: signed checkpoints issued so far.

Nodes and state are written in the same transaction as the entries they cover.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Final

from services.audit.compact_range import CompactRange
from services.audit.merkle import (
    EMPTY_ROOT,
    consistency_proof,
    inclusion_proof,
    node_hash,
)
from services.kit.errors import FailedPrecondition, InvalidArgument

TREE_SCHEMA: Final[tuple[str, ...]] = (
    """CREATE TABLE tree_nodes (
        level INTEGER NOT NULL,
        idx INTEGER NOT NULL,
        hash BLOB NOT NULL,
        PRIMARY KEY (level, idx)
    ) WITHOUT ROWID""",
    """CREATE TABLE tree_state (
        id INTEGER PRIMARY KEY CHECK (id = 0),
        size INTEGER NOT NULL,
        compact BLOB NOT NULL
    )""",
    """CREATE TABLE checkpoints (
        size INTEGER PRIMARY KEY,
        note TEXT NOT NULL,
        created_at_us INTEGER NOT NULL
    )""",
)

_NODE_INSERT: Final = "INSERT INTO tree_nodes (level, idx, hash) VALUES (?, ?, ?)"
# Perfect subtrees below this level are not stored (recomputed from leaves on demand).
STORED_MIN_LEVEL: Final = 4
_BACKFILL_CHUNK: Final = 10_000


def extend(compact: CompactRange, leaf_hashes: Iterable[bytes]) -> list[tuple[int, int, bytes]]:
    """Appends the leaves to ``compact`` (in place); returns the new ``tree_nodes`` rows."""
    return compact.extend(leaf_hashes, STORED_MIN_LEVEL)


def save_state(conn: sqlite3.Connection, compact: CompactRange) -> None:
    conn.execute(
        "INSERT INTO tree_state (id, size, compact) VALUES (0, ?, ?)"
        " ON CONFLICT (id) DO UPDATE SET size = excluded.size, compact = excluded.compact",
        (compact.size, compact.to_bytes()),
    )


def backfill(conn: sqlite3.Connection) -> None:
    """Builds the tree of the existing entries (schema upgrade), in the caller's transaction."""
    compact = CompactRange()
    cursor = conn.execute("SELECT idx, leaf_hash FROM entries ORDER BY idx")
    while rows := cursor.fetchmany(_BACKFILL_CHUNK):
        expected = compact.size
        for i, (idx, _) in enumerate(rows):
            if idx != expected + i:
                raise FailedPrecondition(f"audit database: entry index {idx} is not dense")
        conn.executemany(_NODE_INSERT, extend(compact, (digest for _, digest in rows)))
    save_state(conn, compact)


def load_state(conn: sqlite3.Connection) -> CompactRange:
    """The persisted compact range; FailedPrecondition if missing or inconsistent.

    Run inside a read transaction so the state and the entry count agree.
    """
    row = conn.execute("SELECT size, compact FROM tree_state WHERE id = 0").fetchone()
    if row is None:
        raise FailedPrecondition("audit database: tree state is missing")
    size, blob = row
    try:
        compact = CompactRange.from_bytes(bytes(blob))
    except (ValueError, TypeError) as exc:
        raise FailedPrecondition(f"audit database: tree state is corrupt: {exc}") from exc
    if compact.size != size:
        raise FailedPrecondition("audit database: tree state size disagrees with its range")
    return compact


def check_entries(conn: sqlite3.Connection, compact: CompactRange) -> None:
    """FailedPrecondition unless the entries are exactly leaves ``[0, compact.size)``."""
    count, last = conn.execute("SELECT COUNT(*), MAX(idx) FROM entries").fetchone()
    size = 0 if last is None else int(last) + 1
    if count != compact.size or size != compact.size:
        raise FailedPrecondition(
            f"audit database: tree size {compact.size} but {count} entries"
            f" (indexes up to {size - 1}); the log was tampered with or is corrupt"
        )


class SqliteTree:
    """Roots and proofs of any tree size up to the current one, from stored nodes."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def get_node(self, level: int, index: int) -> bytes:
        if level < STORED_MIN_LEVEL:
            return self._small_subtree(level, index)
        row = self._conn.execute(
            "SELECT hash FROM tree_nodes WHERE level = ? AND idx = ?", (level, index)
        ).fetchone()
        if row is None:
            raise FailedPrecondition(f"audit database: tree node ({level}, {index}) is missing")
        return bytes(row[0])

    def _small_subtree(self, level: int, index: int) -> bytes:
        """A perfect subtree below STORED_MIN_LEVEL, folded from its leaves."""
        start = index << level
        count = 1 << level
        leaves = [
            bytes(row[0])
            for row in self._conn.execute(
                "SELECT leaf_hash FROM entries WHERE idx >= ? AND idx < ? ORDER BY idx",
                (start, start + count),
            )
        ]
        if len(leaves) != count:
            raise FailedPrecondition(
                f"audit database: leaves {start}..{start + count - 1} are missing"
            )
        while len(leaves) > 1:
            leaves = [node_hash(leaves[i], leaves[i + 1]) for i in range(0, len(leaves), 2)]
        return leaves[0]

    def root(self, size: int, current: CompactRange) -> bytes:
        """``MTH(D[0:size])`` for ``0 <= size <= current.size`` (checked by the caller)."""
        if size == current.size:
            return current.root()
        if size == 0:
            return EMPTY_ROOT
        # Fold the perfect subtrees that make up [0, size) from the right.
        parts: list[tuple[int, int]] = []
        start, rest = 0, size
        while rest:
            level = rest.bit_length() - 1
            parts.append((level, start >> level))
            start += 1 << level
            rest -= 1 << level
        digest = self.get_node(*parts[-1])
        for level, index in reversed(parts[:-1]):
            digest = node_hash(self.get_node(level, index), digest)
        return digest

    def inclusion_proof(self, index: int, size: int, current: int) -> list[bytes]:
        check_size(size, current, "tree_size")
        if size == 0:
            raise InvalidArgument("tree_size: the tree is empty")
        if index < 0 or index >= size:
            raise InvalidArgument(f"index: {index} is not below tree_size {size}")
        return inclusion_proof(index, size, self.get_node)

    def consistency_proof(self, size1: int, size2: int, current: int) -> list[bytes]:
        check_size(size2, current, "second_tree_size")
        if size1 < 0 or size1 > size2:
            raise InvalidArgument(
                f"first_tree_size: {size1} must be between 0 and second_tree_size {size2}"
            )
        return consistency_proof(size1, size2, self.get_node)


def check_size(size: int, current: int, field: str) -> None:
    if size < 0 or size > current:
        raise InvalidArgument(f"{field}: {size} is not between 0 and the tree size {current}")
