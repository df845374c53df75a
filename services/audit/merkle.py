"""RFC 9162 (Certificate Transparency v2) Merkle tree core for the audit log.

Pure functions over SHA-256 hashes, no I/O:

* Hashing: :func:`leaf_hash`, :func:`node_hash`, :data:`EMPTY_ROOT`.
* Proof generation (:func:`inclusion_proof`, :func:`consistency_proof`) over a
  ``get_node(level, index)`` callback that returns the hash of the *perfect* subtree of
  ``2**level`` leaves starting at leaf ``index * 2**level``. Hashes of the non-perfect
  subtrees on a tree's right edge are derived from perfect ones (:func:`range_hash`),
  so a store only ever needs to keep perfect-subtree hashes (which never change once
  complete). Each proof makes O(log n) ``get_node`` calls.
* Offline verification (:func:`verify_inclusion`, :func:`verify_consistency`) following
  the algorithms of RFC 9162 sections 2.1.3.2 and 2.1.4.2; failures raise
  :class:`ProofError`.

Growing trees (the compact range a store persists, an in-memory tree for tests and
tools, ``MTH`` of a list of leaves) are in :mod:`services.audit.compact_range`.

Proof hashes are ordered as in RFC 9162: from the leaf (or first tree) towards the root.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence
from typing import Final

HASH_SIZE: Final = 32
LEAF_PREFIX: Final = b"\x00"
NODE_PREFIX: Final = b"\x01"
EMPTY_ROOT: Final[bytes] = hashlib.sha256(b"").digest()

GetNode = Callable[[int, int], bytes]
"""``get_node(level, index)``: hash of the perfect subtree of ``2**level`` leaves
starting at leaf ``index * 2**level``."""


class ProofError(ValueError):
    """An inclusion or consistency proof (or its parameters) failed verification."""


def leaf_hash(data: bytes) -> bytes:
    """RFC 9162 leaf hash: ``SHA-256(0x00 || data)``."""
    return hashlib.sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 interior node hash: ``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def _largest_power_of_two_below(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


def perfect_subtrees(start: int, end: int) -> list[tuple[int, int]]:
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


def range_hash(start: int, end: int, get_node: GetNode) -> bytes:
    """``MTH(D[start:end])`` for a non-empty RFC 9162 subtree, from perfect subtree hashes.

    ``MTH`` of a range that is not a power of two is its largest perfect left subtree
    hashed with ``MTH`` of the rest, so folding the perfect decomposition from the right
    gives it; O(log n) ``get_node`` calls.
    """
    parts = perfect_subtrees(start, end)
    level, index = parts[-1]
    h = get_node(level, index)
    for level, index in reversed(parts[:-1]):
        h = node_hash(get_node(level, index), h)
    return h


def check_size(value: int, what: str) -> None:
    """ValueError naming ``what`` if ``value`` (a tree size or leaf index) is negative."""
    if value < 0:
        raise ValueError(f"{what} must be >= 0, got {value}")


def inclusion_proof(index: int, size: int, get_node: GetNode) -> list[bytes]:
    """RFC 9162 ``PATH(index, D[0:size])``: the audit path for leaf ``index`` (section 2.1.3.1).

    ``get_node`` is only asked for perfect subtrees inside ``[0, size)``; O(log size)
    calls. Raises ValueError unless ``0 <= index < size``.
    """
    check_size(index, "index")
    if index >= size:
        raise ValueError(f"index {index} out of range for tree size {size}")
    path: list[bytes] = []
    start, m, n = 0, index, size
    while n > 1:
        k = _largest_power_of_two_below(n)
        if m < k:
            # Sibling is the right part D[k:n]; only here can it be non-perfect.
            path.append(range_hash(start + k, start + n, get_node))
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
    check_size(size1, "size1")
    if size1 > size2:
        raise ValueError(f"size1 {size1} > size2 {size2}")
    if size1 == 0:
        return []
    proof: list[bytes] = []
    start, m, n, whole = 0, size1, size2, True
    while m != n:
        k = _largest_power_of_two_below(n)
        if m <= k:
            proof.append(range_hash(start + k, start + n, get_node))
            n = k
        else:
            proof.append(get_node(k.bit_length() - 1, start // k))
            start, m, n, whole = start + k, m - k, n - k, False
    if not whole:
        # SUBPROOF(m, D[m], false) = MTH(D[m]); the loop only ends here with n a power
        # of two, so this is a single perfect subtree.
        proof.append(range_hash(start, start + n, get_node))
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
    _check_consistency_args(size1, size2, proof, root1, root2)
    if size1 in (0, size2):
        _check_trivial_consistency(size1, size2, proof, root1, root2)
        return
    # Now 0 < size1 < size2: the RFC's steps, numbered as there.
    # 1. An empty proof fails.
    if not proof:
        raise ProofError(f"empty consistency proof for sizes {size1} < {size2}")
    # 2. If size1 is an exact power of 2, its root starts the path.
    path = list(proof)
    if size1 & (size1 - 1) == 0:
        path.insert(0, root1)
    # 3. and 4. Start from the last leaves; shift right while LSB(fn) is set.
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # 5. and 6. Walk the path (with 7.'s check that sn ends at 0).
    fr, sr = _walk_consistency_path(path, fn, sn, f"{size1} < {size2}")
    # 7. Both roots must be the ones given.
    if not hmac.compare_digest(fr, root1):
        raise ProofError(
            f"consistency proof yields root {fr.hex()} for size {size1}, want {root1.hex()}"
        )
    if not hmac.compare_digest(sr, root2):
        raise ProofError(
            f"consistency proof yields root {sr.hex()} for size {size2}, want {root2.hex()}"
        )


def _check_consistency_args(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """The argument checks: sizes, hash lengths."""
    if size1 < 0 or size2 < 0:
        raise ProofError(f"negative tree size {size1} or {size2}")
    if size1 > size2:
        raise ProofError(f"size1 {size1} > size2 {size2}: trees do not shrink")
    _check_digest(root1, "root1")
    _check_digest(root2, "root2")
    _check_proof_hashes(proof, "proof")


def _check_trivial_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """The cases without a proof to walk: ``size1 == 0`` or ``size1 == size2``."""
    if size1 == 0 and not hmac.compare_digest(root1, EMPTY_ROOT):
        raise ProofError("root1 of an empty tree must be EMPTY_ROOT")
    if size1 == size2:
        if proof:
            raise ProofError(f"proof must be empty when size1 == size2 == {size1}")
        if not hmac.compare_digest(root1, root2):
            raise ProofError(f"different roots for the same tree size {size1}")
    elif proof:
        raise ProofError("proof must be empty when size1 == 0")


def _walk_consistency_path(
    path: Sequence[bytes], fn: int, sn: int, sizes: str
) -> tuple[bytes, bytes]:
    """RFC 9162 section 2.1.4.2 steps 5 and 6, and 7's check that ``sn`` is 0: the roots
    ``(fr, sr)`` the path leads to. ``sizes`` (``"size1 < size2"``) is for the errors."""
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError(f"consistency proof too long for sizes {sizes}")
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
        raise ProofError(f"consistency proof too short for sizes {sizes}")
    return fr, sr
