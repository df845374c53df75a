"""Growing RFC 9162 trees: the compact range a store persists, and an in-memory tree.

* :class:`CompactRange`: the right edge of a growing tree (one perfect-subtree hash per
  set bit of the size). It gives the root in O(log n), appends in O(1) amortized and
  serializes to a few hundred bytes, so a store can persist it and restart without
  rehashing every leaf.
* :func:`root_from_leaves`: ``MTH`` of a list of leaf hashes (RFC 9162 section 2.1.1).
* :class:`MemoryTree`: an in-memory tree storing every perfect subtree hash, for tests
  and small tools.

The hashing, proof generation and verification they build on are in
:mod:`services.audit.merkle`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from typing import Final

from services.audit.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    NODE_PREFIX,
    check_size,
    consistency_proof,
    inclusion_proof,
    node_hash,
    perfect_subtrees,
    range_hash,
)

__all__ = ["CompactRange", "MemoryTree", "NodeVisitor", "root_from_leaves"]

NodeVisitor = Callable[[int, int, bytes], None]
"""Called as ``visit(level, index, hash)`` for each perfect subtree that becomes complete."""

_SIZE_BYTES: Final = 8


def root_from_leaves(leaf_hashes: Sequence[bytes]) -> bytes:
    """``MTH`` of a list of leaf hashes (RFC 9162 section 2.1.1); O(n) time, O(log n) memory."""
    compact = CompactRange()
    for h in leaf_hashes:
        compact.append(h)
    return compact.root()


def _check_hash(value: bytes, what: str) -> None:
    if len(value) != HASH_SIZE:
        raise ValueError(f"{what} must be {HASH_SIZE} bytes, got {len(value)}")


class CompactRange:
    """The perfect subtrees covering leaves ``[0, size)``: one hash per set bit of ``size``.

    ``hashes`` are ordered left to right, i.e. by decreasing level; the i-th covers the
    subtree whose level is the i-th highest set bit of ``size``.
    """

    __slots__ = ("_hashes", "_size")

    def __init__(self) -> None:
        self._size = 0
        self._hashes: list[bytes] = []

    @classmethod
    def from_hashes(cls, size: int, hashes: Sequence[bytes]) -> CompactRange:
        """Rebuilds a range from ``size`` and its ``hashes``; raises ValueError if they disagree."""
        check_size(size, "size")
        if len(hashes) != size.bit_count():
            raise ValueError(
                f"size {size} needs {size.bit_count()} subtree hashes, got {len(hashes)}"
            )
        for i, h in enumerate(hashes):
            _check_hash(h, f"hashes[{i}]")
        out = cls()
        out._size = size
        out._hashes = [bytes(h) for h in hashes]
        return out

    @classmethod
    def from_bytes(cls, data: bytes) -> CompactRange:
        """Parses :meth:`to_bytes` output; raises ValueError if malformed."""
        if len(data) < _SIZE_BYTES:
            raise ValueError(f"compact range needs at least {_SIZE_BYTES} bytes")
        size = int.from_bytes(data[:_SIZE_BYTES], "big")
        body = data[_SIZE_BYTES:]
        want = size.bit_count() * HASH_SIZE
        if len(body) != want:
            raise ValueError(
                f"compact range of size {size} needs {want} hash bytes, got {len(body)}"
            )
        return cls.from_hashes(
            size, [body[i : i + HASH_SIZE] for i in range(0, len(body), HASH_SIZE)]
        )

    def to_bytes(self) -> bytes:
        """``size`` as 8 big-endian bytes, then the 32-byte ``hashes`` in order."""
        return self._size.to_bytes(_SIZE_BYTES, "big") + b"".join(self._hashes)

    @property
    def size(self) -> int:
        """Number of leaves covered."""
        return self._size

    @property
    def hashes(self) -> tuple[bytes, ...]:
        """The perfect-subtree hashes, left to right (decreasing level)."""
        return tuple(self._hashes)

    def nodes(self) -> list[tuple[int, int, bytes]]:
        """``(level, index, hash)`` of each perfect subtree, left to right."""
        return [
            (level, index, h)
            for (level, index), h in zip(perfect_subtrees(0, self._size), self._hashes, strict=True)
        ]

    def append(self, leaf_hash: bytes, visit: NodeVisitor | None = None) -> None:
        """Adds a leaf; O(1) amortized.

        ``visit(level, index, hash)``, if given, is called for the leaf (level 0) and then
        for every perfect subtree completed by it, bottom up, so a store can persist the
        hashes that :data:`GetNode` serves.
        """
        _check_hash(leaf_hash, "leaf hash")
        index = self._size
        h = bytes(leaf_hash)
        level = 0
        if visit is not None:
            visit(0, index, h)
        while index & 1:
            h = node_hash(self._hashes.pop(), h)
            index >>= 1
            level += 1
            if visit is not None:
                visit(level, index, h)
        self._hashes.append(h)
        self._size += 1

    def extend(
        self, leaf_hashes: Iterable[bytes], min_level: int = 1
    ) -> list[tuple[int, int, bytes]]:
        """Appends many leaves (the store's hot path); returns ``(level, index, hash)`` of
        every perfect subtree of ``min_level`` or more they complete (``min_level >= 1``:
        never the leaves), bottom up per leaf.

        Same result as :meth:`append` per leaf, without the per-leaf callback. On a
        ValueError (a hash that is not 32 bytes) the range is partly extended: extend a
        copy when that matters.
        """
        nodes: list[tuple[int, int, bytes]] = []
        hashes = self._hashes
        sha256 = hashlib.sha256
        # Hot loop (once per appended leaf): locals only; the size is written back once.
        size = self._size
        try:
            for leaf in leaf_hashes:
                if len(leaf) != HASH_SIZE:
                    raise ValueError(f"leaf hash must be {HASH_SIZE} bytes, got {len(leaf)}")
                h = bytes(leaf)
                index = size
                level = 0
                while index & 1:
                    h = sha256(NODE_PREFIX + hashes.pop() + h).digest()
                    index >>= 1
                    level += 1
                    if level >= min_level:
                        nodes.append((level, index, h))
                hashes.append(h)
                size += 1
        finally:
            self._size = size
        return nodes

    def root(self) -> bytes:
        """``MTH`` of the covered leaves (:data:`EMPTY_ROOT` when empty); O(log n)."""
        if not self._hashes:
            return EMPTY_ROOT
        h = self._hashes[-1]
        for left in reversed(self._hashes[:-1]):
            h = node_hash(left, h)
        return h

    def copy(self) -> CompactRange:
        """An independent copy."""
        return CompactRange.from_hashes(self._size, self._hashes)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CompactRange):
            return NotImplemented
        return self._size == other._size and self._hashes == other._hashes

    def __hash__(self) -> int:
        return hash((self._size, tuple(self._hashes)))

    def __repr__(self) -> str:
        return f"CompactRange(size={self._size}, root={self.root().hex()})"


class MemoryTree:
    """An append-only tree keeping every perfect subtree hash in memory (tests, tools).

    Serves roots and proofs for any size up to the current one.
    """

    __slots__ = ("_compact", "_levels")

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        self._levels: list[list[bytes]] = []
        self._compact = CompactRange()
        self.extend(leaf_hashes)

    def _store(self, level: int, index: int, h: bytes) -> None:
        if level == len(self._levels):
            self._levels.append([])
        row = self._levels[level]
        assert index == len(row), "perfect subtrees complete left to right"
        row.append(h)

    def append(self, leaf_hash: bytes) -> None:
        """Adds one leaf hash."""
        self._compact.append(leaf_hash, self._store)

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """Adds leaf hashes in order."""
        for h in leaf_hashes:
            self.append(h)

    @property
    def size(self) -> int:
        """Number of leaves."""
        return self._compact.size

    def compact_range(self) -> CompactRange:
        """A copy of the current right edge."""
        return self._compact.copy()

    def get_node(self, level: int, index: int) -> bytes:
        """Hash of a complete perfect subtree; raises IndexError if it is not complete yet."""
        if level < 0 or index < 0 or level >= len(self._levels):
            raise IndexError(f"no complete subtree at level {level}, index {index}")
        row = self._levels[level]
        if index >= len(row):
            raise IndexError(f"no complete subtree at level {level}, index {index}")
        return row[index]

    def _resolve(self, size: int | None) -> int:
        if size is None:
            return self.size
        check_size(size, "size")
        if size > self.size:
            raise ValueError(f"size {size} exceeds current tree size {self.size}")
        return size

    def root(self, size: int | None = None) -> bytes:
        """``MTH`` of the first ``size`` leaves (default: all); O(log n)."""
        n = self._resolve(size)
        if n == 0:
            return EMPTY_ROOT
        return range_hash(0, n, self.get_node)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """Audit path for leaf ``index`` in the tree of ``size`` leaves (default: all)."""
        return inclusion_proof(index, self._resolve(size), self.get_node)

    def consistency_proof(self, size1: int, size2: int | None = None) -> list[bytes]:
        """Consistency proof from ``size1`` to ``size2`` leaves (default: all)."""
        return consistency_proof(size1, self._resolve(size2), self.get_node)
