"""RFC 9162 (Certificate Transparency v2) Merkle tree core for the audit log.

Pure functions over SHA-256 hashes, no I/O:

* Hashing: :func:`leaf_hash`, :func:`node_hash`, :data:`EMPTY_ROOT`, and
  :func:`root_from_leaves` (the RFC 9162 section 2.1.1 ``MTH``).
* :class:`CompactRange`: the right edge of a growing tree (one perfect-subtree hash per
  set bit of the size). It gives the root in O(log n), appends in O(1) amortized and
  serializes to a few hundred bytes, so a store can persist it and restart without
  rehashing every leaf.
* Proof generation (:func:`inclusion_proof`, :func:`consistency_proof`) over a
  ``get_node(level, index)`` callback that returns the hash of the *perfect* subtree of
  ``2**level`` leaves starting at leaf ``index * 2**level``. Hashes of the non-perfect
  subtrees on a tree's right edge are derived from perfect ones, so a store only ever
  needs to keep perfect-subtree hashes (which never change once complete). Each proof
  makes O(log n) ``get_node`` calls.
* Offline verification (:func:`verify_inclusion`, :func:`verify_consistency`) following
  the algorithms of RFC 9162 sections 2.1.3.2 and 2.1.4.2; failures raise
  :class:`ProofError`.
* :class:`MemoryTree`: an in-memory tree storing every perfect subtree hash, for tests
  and small tools.

Proof hashes are ordered as in RFC 9162: from the leaf (or first tree) towards the root.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable, Sequence
from typing import Final

HASH_SIZE: Final = 32
_LEAF_PREFIX: Final = b"\x00"
_NODE_PREFIX: Final = b"\x01"
EMPTY_ROOT: Final[bytes] = hashlib.sha256(b"").digest()

GetNode = Callable[[int, int], bytes]
"""``get_node(level, index)``: hash of the perfect subtree of ``2**level`` leaves
starting at leaf ``index * 2**level``."""

NodeVisitor = Callable[[int, int, bytes], None]
"""Called as ``visit(level, index, hash)`` for each perfect subtree that becomes complete."""

_SIZE_BYTES: Final = 8


class ProofError(ValueError):
    """An inclusion or consistency proof (or its parameters) failed verification."""


def leaf_hash(data: bytes) -> bytes:
    """RFC 9162 leaf hash: ``SHA-256(0x00 || data)``."""
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 interior node hash: ``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def root_from_leaves(leaf_hashes: Sequence[bytes]) -> bytes:
    """``MTH`` of a list of leaf hashes (RFC 9162 section 2.1.1); O(n) time, O(log n) memory."""
    compact = CompactRange()
    for h in leaf_hashes:
        compact.append(h)
    return compact.root()


def _check_hash(value: bytes, what: str) -> None:
    if len(value) != HASH_SIZE:
        raise ValueError(f"{what} must be {HASH_SIZE} bytes, got {len(value)}")


def _largest_power_of_two_below(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


def _perfect_subtrees(start: int, end: int) -> list[tuple[int, int]]:
    """``(level, index)`` of the perfect subtrees covering ``[start, end)``, left to right.

    ``start`` must be a multiple of a power of two that is at least ``end - start`` (true
    of every subtree ``D[k:n]`` in RFC 9162's recursive definitions), so the range splits
    along the set bits of its size, largest first.
    """
    out: list[tuple[int, int]] = []
    size = end - start
    while size:
        level = size.bit_length() - 1
        out.append((level, start >> level))
        start += 1 << level
        size -= 1 << level
    return out


def _range_hash(start: int, end: int, get_node: GetNode) -> bytes:
    """``MTH(D[start:end])`` for a non-empty RFC 9162 subtree, from perfect subtree hashes.

    ``MTH`` of a range that is not a power of two is its largest perfect left subtree
    hashed with ``MTH`` of the rest, so folding the perfect decomposition from the right
    gives it; O(log n) ``get_node`` calls.
    """
    parts = _perfect_subtrees(start, end)
    level, index = parts[-1]
    h = get_node(level, index)
    for level, index in reversed(parts[:-1]):
        h = node_hash(get_node(level, index), h)
    return h


def _check_size(value: int, what: str) -> None:
    if value < 0:
        raise ValueError(f"{what} must be >= 0, got {value}")


def inclusion_proof(index: int, size: int, get_node: GetNode) -> list[bytes]:
    """RFC 9162 ``PATH(index, D[0:size])``: the audit path for leaf ``index`` (section 2.1.3.1).

    ``get_node`` is only asked for perfect subtrees inside ``[0, size)``; O(log size)
    calls. Raises ValueError unless ``0 <= index < size``.
    """
    _check_size(index, "index")
    if index >= size:
        raise ValueError(f"index {index} out of range for tree size {size}")
    path: list[bytes] = []
    start, m, n = 0, index, size
    while n > 1:
        k = _largest_power_of_two_below(n)
        if m < k:
            # Sibling is the right part D[k:n]; only here can it be non-perfect.
            path.append(_range_hash(start + k, start + n, get_node))
            n = k
        else:
            path.append(get_node(k.bit_length() - 1, start // k))
            start, m, n = start + k, m - k, n - k
    path.reverse()
    return path


def consistency_proof(size1: int, size2: int, get_node: GetNode) -> list[bytes]:
    """RFC 9162 ``PROOF(size1, D[0:size2])`` (section 2.1.4.1).

    Empty when ``size1 == 0`` or ``size1 == size2`` (nothing to prove). ``get_node`` is
    only asked for perfect subtrees inside ``[0, size2)``; O(log size2) calls. Raises
    ValueError unless ``0 <= size1 <= size2``.
    """
    _check_size(size1, "size1")
    if size1 > size2:
        raise ValueError(f"size1 {size1} > size2 {size2}")
    if size1 == 0:
        return []
    proof: list[bytes] = []
    start, m, n, whole = 0, size1, size2, True
    while m != n:
        k = _largest_power_of_two_below(n)
        if m <= k:
            proof.append(_range_hash(start + k, start + n, get_node))
            n = k
        else:
            proof.append(get_node(k.bit_length() - 1, start // k))
            start, m, n, whole = start + k, m - k, n - k, False
    if not whole:
        # SUBPROOF(m, D[m], false) = MTH(D[m]); the loop only ends here with n a power
        # of two, so this is a single perfect subtree.
        proof.append(_range_hash(start, start + n, get_node))
    proof.reverse()
    return proof


def _check_proof_hashes(proof: Sequence[bytes], what: str) -> None:
    for i, h in enumerate(proof):
        if len(h) != HASH_SIZE:
            raise ProofError(f"{what}[{i}] is {len(h)} bytes, want {HASH_SIZE}")


def _check_digest(value: bytes, what: str) -> None:
    if len(value) != HASH_SIZE:
        raise ProofError(f"{what} is {len(value)} bytes, want {HASH_SIZE}")


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Checks an inclusion proof (RFC 9162 section 2.1.3.2); raises ProofError if invalid."""
    if index < 0 or size < 0:
        raise ProofError(f"negative index {index} or tree size {size}")
    if index >= size:
        raise ProofError(f"index {index} is not below tree size {size}")
    _check_digest(leaf_hash, "leaf hash")
    _check_digest(root, "root")
    _check_proof_hashes(proof, "proof")
    fn, sn = index, size - 1
    r = leaf_hash
    for p in proof:
        if sn == 0:
            raise ProofError(f"proof too long for index {index} in tree size {size}")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(f"proof too short for index {index} in tree size {size}")
    if not hmac.compare_digest(r, root):
        raise ProofError(
            f"inclusion proof for index {index} in tree size {size} yields root"
            f" {r.hex()}, want {root.hex()}"
        )


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """Checks a consistency proof (RFC 9162 section 2.1.4.2); raises ProofError if invalid.

    Edge cases: ``size1 == size2`` needs an empty proof and equal roots; ``size1 == 0``
    needs an empty proof and ``root1 == EMPTY_ROOT`` (stricter than some libraries,
    which ignore ``root1`` there).
    """
    if size1 < 0 or size2 < 0:
        raise ProofError(f"negative tree size {size1} or {size2}")
    if size1 > size2:
        raise ProofError(f"size1 {size1} > size2 {size2}: trees do not shrink")
    _check_digest(root1, "root1")
    _check_digest(root2, "root2")
    _check_proof_hashes(proof, "proof")
    if size1 == 0 and not hmac.compare_digest(root1, EMPTY_ROOT):
        raise ProofError("root1 of an empty tree must be EMPTY_ROOT")
    if size1 == size2:
        if proof:
            raise ProofError(f"proof must be empty when size1 == size2 == {size1}")
        if not hmac.compare_digest(root1, root2):
            raise ProofError(f"different roots for the same tree size {size1}")
        return
    if size1 == 0:
        if proof:
            raise ProofError("proof must be empty when size1 == 0")
        return
    # Now 0 < size1 < size2.
    if not proof:
        raise ProofError(f"empty consistency proof for sizes {size1} < {size2}")
    path = list(proof)
    if size1 & (size1 - 1) == 0:
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError(f"consistency proof too long for sizes {size1} < {size2}")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(f"consistency proof too short for sizes {size1} < {size2}")
    if not hmac.compare_digest(fr, root1):
        raise ProofError(
            f"consistency proof yields root {fr.hex()} for size {size1}, want {root1.hex()}"
        )
    if not hmac.compare_digest(sr, root2):
        raise ProofError(
            f"consistency proof yields root {sr.hex()} for size {size2}, want {root2.hex()}"
        )


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
        _check_size(size, "size")
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
            for (level, index), h in zip(
                _perfect_subtrees(0, self._size), self._hashes, strict=True
            )
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

    def extend(self, leaf_hashes: Iterable[bytes]) -> list[tuple[int, int, bytes]]:
        """Appends many leaves (the store's hot path); returns ``(level, index, hash)`` of
        every perfect subtree they complete above the leaves, bottom up per leaf.

        Same result as :meth:`append` per leaf, without the per-leaf callback. On a
        ValueError (a hash that is not 32 bytes) the range is partly extended: extend a
        copy when that matters.
        """
        nodes: list[tuple[int, int, bytes]] = []
        hashes = self._hashes
        sha256 = hashlib.sha256
        for leaf in leaf_hashes:
            if len(leaf) != HASH_SIZE:
                raise ValueError(f"leaf hash must be {HASH_SIZE} bytes, got {len(leaf)}")
            h = leaf
            index = self._size
            level = 0
            while index & 1:
                h = sha256(_NODE_PREFIX + hashes.pop() + h).digest()
                index >>= 1
                level += 1
                nodes.append((level, index, h))
            hashes.append(bytes(h))
            self._size += 1
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
        _check_size(size, "size")
        if size > self.size:
            raise ValueError(f"size {size} exceeds current tree size {self.size}")
        return size

    def root(self, size: int | None = None) -> bytes:
        """``MTH`` of the first ``size`` leaves (default: all); O(log n)."""
        n = self._resolve(size)
        if n == 0:
            return EMPTY_ROOT
        return _range_hash(0, n, self.get_node)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """Audit path for leaf ``index`` in the tree of ``size`` leaves (default: all)."""
        return inclusion_proof(index, self._resolve(size), self.get_node)

    def consistency_proof(self, size1: int, size2: int | None = None) -> list[bytes]:
        """Consistency proof from ``size1`` to ``size2`` leaves (default: all)."""
        return consistency_proof(size1, self._resolve(size2), self.get_node)
