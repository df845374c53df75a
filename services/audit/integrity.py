"""Integrity at rest: re-check what the audit database stores against itself.

Bits rot and files get edited. Appends trust what they wrote, so this re-derives it:

* every entry's ``leaf_hash`` = SHA-256(0x00 || record) of its stored ``record``;
* every stored tree node (16 leaves and up) = the hash of its two children (the
  16-leaf nodes folded from the leaves);
* the tree edge in ``tree_state`` = the stored nodes it stands for;
* every stored checkpoint: signed by the service's key, and its root = the tree's root
  at its size.

At start, :meth:`IntegrityChecker.check_startup` checks the tail (the newest
``tail_entries`` entries, the edge and the newest checkpoints), which bounds the time
spent before serving (measured by ``bench/audit.py`` at 1M entries). Then
:meth:`IntegrityChecker.run` checks everything, chunk by chunk in the background,
pass after pass. The first mismatch is logged (ERROR, once per kind of problem and
place), counted in ``roost_audit_integrity_mismatches_total``, and turns
``roost_audit_integrity_ok`` to 0 (``roost status`` shows it); the service keeps
serving: the signed checkpoints auditors hold are what proves tampering.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from pathlib import Path

from prometheus_client import Counter, Gauge

from services.audit import tree
from services.audit.checkpoint import CheckpointError, NoteVerifier, verify_checkpoint
from services.audit.compact_range import CompactRange
from services.audit.merkle import leaf_hash, node_hash, perfect_subtrees
from services.kit.errors import FailedPrecondition

logger = logging.getLogger(__name__)

INTEGRITY_OK = Gauge(
    "roost_audit_integrity_ok", "1 while every re-check of the stored log matched, else 0."
)
MISMATCHES = Counter(
    "roost_audit_integrity_mismatches_total",
    "Stored leaf hashes, tree nodes or checkpoints found not to match.",
)
CHECKED = Counter(
    "roost_audit_integrity_entries_checked_total", "Entries whose leaf hash was re-checked."
)
STARTUP_SECONDS = Gauge(
    "roost_audit_integrity_startup_seconds", "Time the start-up (tail) check took."
)

LEAF_GROUP_LEVEL = tree.STORED_MIN_LEVEL  # 16 leaves: the lowest stored node
CHUNK_LEVEL = 12  # a background step checks 4,096 entries
_NODE = "SELECT hash FROM tree_nodes WHERE level = ? AND idx = ?"


class IntegrityChecker:
    """Re-checks the database at ``path`` on a read-only connection of its own."""

    def __init__(self, path: Path, verifier: NoteVerifier) -> None:
        uri = f"{path.resolve().as_uri()}?mode=ro"
        self._conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
        self._conn.execute("PRAGMA busy_timeout = 5000")
        self._verifier = verifier
        self._tree = tree.SqliteTree(self._conn)
        self.first_mismatch: str | None = None
        self.mismatches = 0
        INTEGRITY_OK.set(1)

    def close(self) -> None:
        self._conn.close()

    # ------------------------------------------------------------------ passes

    def check_startup(self, tail_entries: int = 65_536, checkpoints: int = 8) -> None:
        """The newest ``tail_entries`` entries, the tree edge and the newest checkpoints."""
        started = time.perf_counter()
        size = self._size()
        start = max(0, size - tail_entries) >> LEAF_GROUP_LEVEL << LEAF_GROUP_LEVEL
        self.check_entries(start, size)
        self.check_checkpoints(checkpoints)
        took = time.perf_counter() - started
        STARTUP_SECONDS.set(took)
        logger.info("audit integrity: the newest %d entries checked in %.2f s", size - start, took)

    def check_entries(self, start: int, end: int) -> None:
        """Leaf hashes of entries ``[start, end)`` (``start`` a multiple of 16), the stored
        nodes inside that range, and the tree edge."""
        self._conn.execute("BEGIN")
        try:
            compact = tree.load_state(self._conn)
            end = min(end, compact.size)
            leaves = self._check_leaves(start, end)
            self._check_nodes(start, end, leaves)
            self._check_edge(compact)
        finally:
            self._conn.execute("COMMIT")

    def check_checkpoints(self, limit: int | None = None) -> None:
        """The stored checkpoints (newest first; all without ``limit``) against the tree."""
        self._conn.execute("BEGIN")
        try:
            current = tree.load_state(self._conn)
            rows = self._conn.execute(
                "SELECT size, note FROM checkpoints ORDER BY size DESC LIMIT ?",
                (-1 if limit is None else limit,),
            ).fetchall()
            for size, note in rows:
                self._check_checkpoint(int(size), str(note), current)
        finally:
            self._conn.execute("COMMIT")

    async def run(self, chunk_pause_seconds: float, pass_interval_seconds: float) -> None:
        """Whole passes in the background (until cancelled): one chunk at a time, off
        the event loop, ``chunk_pause_seconds`` apart; a pass every
        ``pass_interval_seconds``."""
        chunk = 1 << CHUNK_LEVEL
        while True:
            started = time.monotonic()
            start = 0
            try:
                while start < (size := await asyncio.to_thread(self._size)):
                    await asyncio.to_thread(self.check_entries, start, min(start + chunk, size))
                    start += chunk
                    await asyncio.sleep(chunk_pause_seconds)
                await asyncio.to_thread(self.check_checkpoints)
            except (sqlite3.Error, FailedPrecondition) as exc:
                self._mismatch(f"the log could not be re-checked from entry {start}: {exc}")
            logger.debug("audit integrity: pass over %d entries done", size)
            await asyncio.sleep(max(0.0, pass_interval_seconds - (time.monotonic() - started)))

    # ------------------------------------------------------------------ checks

    def _size(self) -> int:
        row = self._conn.execute("SELECT size FROM tree_state WHERE id = 0").fetchone()
        return 0 if row is None else int(row[0])

    def _check_leaves(self, start: int, end: int) -> list[bytes]:
        leaves: list[bytes] = []
        rows = self._conn.execute(
            "SELECT idx, record, leaf_hash FROM entries WHERE idx >= ? AND idx < ? ORDER BY idx",
            (start, end),
        )
        for expected, (idx, record, stored) in enumerate(rows, start=start):
            if idx != expected:
                self._mismatch(f"entry {expected} is missing")
                return leaves
            if leaf_hash(bytes(record)) != bytes(stored):
                self._mismatch(f"entry {idx}: the stored leaf hash does not match its record")
            leaves.append(bytes(stored))
        CHECKED.inc(len(leaves))
        if len(leaves) != end - start:
            self._mismatch(f"entries {start + len(leaves)}..{end - 1} are missing")
        return leaves

    def _check_nodes(self, start: int, end: int, leaves: list[bytes]) -> None:
        """Stored nodes whose leaves all lie in ``[start, end)``, bottom up."""
        group = 1 << LEAF_GROUP_LEVEL
        level_hashes: dict[int, bytes] = {}
        for offset in range(0, len(leaves) - group + 1, group):
            folded = leaves[offset : offset + group]
            while len(folded) > 1:
                folded = [node_hash(folded[i], folded[i + 1]) for i in range(0, len(folded), 2)]
            level_hashes[(start + offset) >> LEAF_GROUP_LEVEL] = folded[0]
        level = LEAF_GROUP_LEVEL
        while level_hashes:
            for index, want in level_hashes.items():
                row = self._conn.execute(_NODE, (level, index)).fetchone()
                if row is None or bytes(row[0]) != want:
                    self._mismatch(f"tree node ({level}, {index}) does not match its leaves")
            level += 1
            level_hashes = {
                i // 2: node_hash(level_hashes[i], level_hashes[i + 1])
                for i in level_hashes
                if i % 2 == 0 and i + 1 in level_hashes
            }
        self._check_upper_nodes(start, end, level)

    def _check_upper_nodes(self, start: int, end: int, level: int) -> None:
        """Stored nodes above the chunk that end inside it: from their stored children."""
        for lvl in range(level, 64):
            width = 1 << lvl
            index = end // width - 1
            if index < 0 or (index + 1) * width <= start:
                break
            row = self._conn.execute(_NODE, (lvl, index)).fetchone()
            left = self._conn.execute(_NODE, (lvl - 1, 2 * index)).fetchone()
            right = self._conn.execute(_NODE, (lvl - 1, 2 * index + 1)).fetchone()
            if row is None or left is None or right is None:
                continue
            if node_hash(bytes(left[0]), bytes(right[0])) != bytes(row[0]):
                self._mismatch(f"tree node ({lvl}, {index}) does not match its children")

    def _check_edge(self, compact: CompactRange) -> None:
        """tree_state's hashes are the perfect subtrees of [0, size) as stored."""
        parts = perfect_subtrees(0, compact.size)
        for (level, index), digest in zip(parts, compact.hashes, strict=True):
            try:
                stored = self._tree.get_node(level, index)
            except FailedPrecondition:
                stored = b""
            if stored != digest:
                self._mismatch(f"the tree state's subtree ({level}, {index}) is not the stored one")

    def _check_checkpoint(self, size: int, note: str, current: CompactRange) -> None:
        try:
            cp = verify_checkpoint(self._verifier, note, self._verifier.name)
        except CheckpointError:
            self._mismatch(f"the stored checkpoint of size {size} is not signed by this log's key")
            return
        if cp.size != size or size > current.size:
            self._mismatch(f"the stored checkpoint of size {size} does not fit the tree")
            return
        try:
            root = self._tree.root(size, current)
        except FailedPrecondition:
            root = b""
        if root != cp.root_hash:
            self._mismatch(f"the stored checkpoint of size {size} does not match the tree's root")

    def _mismatch(self, what: str) -> None:
        self.mismatches += 1
        MISMATCHES.inc()
        INTEGRITY_OK.set(0)
        if self.first_mismatch is None:
            self.first_mismatch = what
            logger.error("audit integrity: %s (the first mismatch found)", what)
