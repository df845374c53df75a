"""RFC 9162 Merkle tree core: published vectors, reference cross-checks and properties
of hashing, proof generation and proof verification."""

from __future__ import annotations

import hashlib
import random

import pytest

from services.audit.compact_range import MemoryTree, root_from_leaves
from services.audit.merkle import (
    EMPTY_ROOT,
    ProofError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    verify_consistency,
    verify_inclusion,
)
from tests.support.merkle_vectors import (
    CONSISTENCY_VECTORS,
    INCLUSION_VECTORS,
    LEAF_HASHES,
    ROOT_HASHES,
    ROOTS,
    SOME_HASH,
    distinct_leaves,
    flip,
    ref_mth,
    ref_path,
    ref_proof,
    unhex,
)

# --- Hashing --------------------------------------------------------------------------


def test_hash_primitives() -> None:
    assert EMPTY_ROOT.hex() == ROOT_HASHES[0]
    assert leaf_hash(b"") == hashlib.sha256(b"\x00").digest()
    assert (
        node_hash(b"a" * 32, b"b" * 32) == hashlib.sha256(b"\x01" + b"a" * 32 + b"b" * 32).digest()
    )


# --- Published proofs -----------------------------------------------------------------


def inclusion_probes(
    index: int, size: int, proof: list[bytes], root: bytes, leaf: bytes
) -> list[tuple[str, int, int, list[bytes], bytes, bytes]]:
    """Corruptions from verify_test.go's corruptInclusionProof; all must fail."""
    probes = [
        ("index - 1", index - 1, size, proof, root, leaf),
        ("index + 1", index + 1, size, proof, root, leaf),
        ("index ^ 2", index ^ 2, size, proof, root, leaf),
        ("size * 2", index, size * 2, proof, root, leaf),
        ("size // 2", index, size // 2, proof, root, leaf),
        ("wrong leaf", index, size, proof, root, b"WrongLeaf"),
        ("wrong leaf, right length", index, size, proof, root, SOME_HASH),
        ("empty root", index, size, proof, EMPTY_ROOT, leaf),
        ("random root", index, size, proof, SOME_HASH, leaf),
        ("trailing garbage", index, size, [*proof, b""], root, leaf),
        ("trailing root", index, size, [*proof, root], root, leaf),
        ("preceding garbage", index, size, [b"", *proof], root, leaf),
        ("preceding root", index, size, [root, *proof], root, leaf),
    ]
    for i in range(len(proof)):
        wrong = list(proof)
        wrong[i] = flip(wrong[i])
        probes.append((f"modified proof[{i}]", index, size, wrong, root, leaf))
    if proof:
        probes.append(("removed component", index, size, proof[:-1], root, leaf))
    if len(proof) > 1:
        probes.append(
            ("inserted component", index, size, [proof[0], SOME_HASH, *proof[1:]], root, leaf)
        )
    return probes


@pytest.mark.parametrize(("index", "size", "proof_hex"), INCLUSION_VECTORS)
def test_published_inclusion_proofs(index: int, size: int, proof_hex: list[str]) -> None:
    want = unhex(proof_hex)
    tree = MemoryTree(LEAF_HASHES)
    assert tree.inclusion_proof(index, size) == want
    assert inclusion_proof(index, size, tree.get_node) == want
    assert ref_path(index, LEAF_HASHES[:size]) == want
    leaf, root = LEAF_HASHES[index], ROOTS[size]
    verify_inclusion(leaf, index, size, want, root)
    accepted = []
    for desc, i, n, p, r, lf in inclusion_probes(index, size, want, root, leaf):
        try:
            verify_inclusion(lf, i, n, p, r)
        except ProofError:
            continue
        accepted.append(desc)
    assert accepted == []


def consistency_probes(
    size1: int, size2: int, proof: list[bytes], root1: bytes, root2: bytes
) -> list[tuple[str, int, int, list[bytes], bytes, bytes]]:
    """Corruptions from verify_test.go's corruptConsistencyProof; all must fail."""
    probes = [
        ("size1 - 1", size1 - 1, size2, proof, root1, root2),
        ("size1 + 1", size1 + 1, size2, proof, root1, root2),
        ("size1 ^ 2", size1 ^ 2, size2, proof, root1, root2),
        ("size2 * 2", size1, size2 * 2, proof, root1, root2),
        ("size2 // 2", size1, size2 // 2, proof, root1, root2),
        ("wrong root1", size1, size2, proof, b"WrongRoot", root2),
        ("wrong root2", size1, size2, proof, root1, b"WrongRoot"),
        ("wrong root1, right length", size1, size2, proof, SOME_HASH, root2),
        ("wrong root2, right length", size1, size2, proof, root1, SOME_HASH),
        ("swapped roots", size1, size2, proof, root2, root1),
        ("empty proof", size1, size2, [], root1, root2),
        ("trailing garbage", size1, size2, [*proof, b""], root1, root2),
        ("trailing root1", size1, size2, [*proof, root1], root1, root2),
        ("trailing root2", size1, size2, [*proof, root2], root1, root2),
        ("preceding garbage", size1, size2, [b"", *proof], root1, root2),
        ("preceding root1", size1, size2, [root1, *proof], root1, root2),
        ("preceding root2", size1, size2, [root2, *proof], root1, root2),
        ("preceding proof[0]", size1, size2, [proof[0], *proof], root1, root2),
        ("truncated proof", size1, size2, proof[:-1], root1, root2),
    ]
    for i in range(len(proof)):
        wrong = list(proof)
        wrong[i] = flip(wrong[i], 4)
        probes.append((f"modified proof[{i}]", size1, size2, wrong, root1, root2))
    return probes


@pytest.mark.parametrize(("size1", "size2", "proof_hex"), CONSISTENCY_VECTORS)
def test_published_consistency_proofs(size1: int, size2: int, proof_hex: list[str]) -> None:
    want = unhex(proof_hex)
    tree = MemoryTree(LEAF_HASHES)
    assert tree.consistency_proof(size1, size2) == want
    assert consistency_proof(size1, size2, tree.get_node) == want
    assert ref_proof(size1, LEAF_HASHES[:size2]) == want
    root1, root2 = ROOTS[size1], ROOTS[size2]
    verify_consistency(size1, size2, want, root1, root2)
    if not want:
        return
    accepted = []
    for desc, s1, s2, p, r1, r2 in consistency_probes(size1, size2, want, root1, root2):
        try:
            verify_consistency(s1, s2, p, r1, r2)
        except ProofError:
            continue
        accepted.append(desc)
    assert accepted == []


# --- Verification edge cases ----------------------------------------------------------

ROOT_A = hashlib.sha256(b"root a").digest()
ROOT_B = hashlib.sha256(b"root b").digest()


@pytest.mark.parametrize(
    ("size1", "size2", "root1", "root2", "proof", "ok"),
    [
        # Adapted from verify_test.go's TestVerifyConsistency (roots are 32 bytes here).
        (0, 0, EMPTY_ROOT, EMPTY_ROOT, [], True),
        (0, 1, EMPTY_ROOT, ROOT_B, [], True),
        (1, 1, ROOT_B, ROOT_B, [], True),
        (1, 1, ROOT_A, ROOT_B, [], False),
        (0, 0, EMPTY_ROOT, ROOT_B, [], False),
        (1, 0, ROOT_A, ROOT_B, [], False),  # time travel
        (2, 1, ROOT_A, ROOT_B, [], False),
        (1, 2, ROOT_A, ROOT_B, [], False),  # empty proof
        (0, 0, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT], False),
        (0, 1, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT], False),
        (1, 1, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT], False),
        # Stricter than verify_test.go: an empty tree's root must be EMPTY_ROOT.
        (0, 1, ROOT_A, ROOT_B, [], False),
        (0, 0, ROOT_A, ROOT_A, [], False),
        # Malformed input.
        (-1, 1, EMPTY_ROOT, ROOT_B, [], False),
        (1, 1, b"short", b"short", [], False),
        (2, 3, ROOTS[2], ROOTS[3], [b"short"], False),
    ],
)
def test_verify_consistency_edge_cases(
    size1: int, size2: int, root1: bytes, root2: bytes, proof: list[bytes], ok: bool
) -> None:
    if ok:
        verify_consistency(size1, size2, proof, root1, root2)
    else:
        with pytest.raises(ProofError):
            verify_consistency(size1, size2, proof, root1, root2)


@pytest.mark.parametrize(("index", "size"), [(0, 0), (1, 0), (1, 1), (2, 1), (-1, 1), (5, 5)])
def test_verify_inclusion_rejects_index_out_of_range(index: int, size: int) -> None:
    for leaf, root in [(SOME_HASH, EMPTY_ROOT), (SOME_HASH, SOME_HASH), (EMPTY_ROOT, EMPTY_ROOT)]:
        with pytest.raises(ProofError):
            verify_inclusion(leaf, index, size, [], root)


def test_verify_inclusion_single_entry() -> None:
    h = leaf_hash(b"data")
    verify_inclusion(h, 0, 1, [], h)  # a 1-leaf tree's root is its leaf hash
    for leaf, root in [(h, b""), (b"", h), (b"", b""), (h, SOME_HASH)]:
        with pytest.raises(ProofError):
            verify_inclusion(leaf, 0, 1, [], root)


def test_proof_error_messages_are_specific() -> None:
    tree = MemoryTree(distinct_leaves(10))
    proof = tree.inclusion_proof(3)
    leaf = tree.get_node(0, 3)
    with pytest.raises(ProofError, match="too long"):
        verify_inclusion(leaf, 3, 10, [*proof, SOME_HASH], tree.root())
    with pytest.raises(ProofError, match="too short"):
        verify_inclusion(leaf, 3, 10, proof[:-1], tree.root())
    with pytest.raises(ProofError, match="yields root"):
        verify_inclusion(leaf, 3, 10, proof, SOME_HASH)
    with pytest.raises(ProofError, match="not below tree size"):
        verify_inclusion(leaf, 10, 10, proof, tree.root())
    cproof = tree.consistency_proof(3)
    with pytest.raises(ProofError, match="too long"):
        verify_consistency(3, 10, [*cproof, SOME_HASH], tree.root(3), tree.root())
    with pytest.raises(ProofError, match="too short"):
        verify_consistency(3, 10, cproof[:-1], tree.root(3), tree.root())
    with pytest.raises(ProofError, match="for size 3"):
        verify_consistency(3, 10, cproof, SOME_HASH, tree.root())
    with pytest.raises(ProofError, match="for size 10"):
        verify_consistency(3, 10, cproof, tree.root(3), SOME_HASH)
    assert issubclass(ProofError, ValueError)


def test_proof_generation_rejects_bad_arguments() -> None:
    tree = MemoryTree(distinct_leaves(5))
    for index, size in [(5, 5), (0, 0), (-1, 5)]:
        with pytest.raises(ValueError):
            inclusion_proof(index, size, tree.get_node)
    with pytest.raises(ValueError):
        consistency_proof(4, 3, tree.get_node)
    with pytest.raises(ValueError):
        consistency_proof(-1, 3, tree.get_node)
    assert consistency_proof(0, 5, tree.get_node) == []
    assert consistency_proof(5, 5, tree.get_node) == []
    with pytest.raises(ValueError):
        tree.root(6)
    with pytest.raises(ValueError):
        tree.inclusion_proof(0, 6)
    with pytest.raises(ValueError):
        tree.consistency_proof(1, 6)
    with pytest.raises(IndexError):
        tree.get_node(0, 5)
    with pytest.raises(IndexError):
        tree.get_node(1, 2)  # leaves 4..5: incomplete
    with pytest.raises(IndexError):
        tree.get_node(3, 0)


# --- Exhaustive cross-check against the RFC's recursive definitions -------------------


def test_small_trees_match_rfc_definitions_exhaustively() -> None:
    leaves = distinct_leaves(40)
    tree = MemoryTree(leaves)
    for size in range(41):
        d = leaves[:size]
        root = ref_mth(d)
        assert tree.root(size) == root
        for index in range(size):
            proof = tree.inclusion_proof(index, size)
            assert proof == ref_path(index, d), (index, size)
            verify_inclusion(leaves[index], index, size, proof, root)
        for size1 in range(size + 1):
            cproof = tree.consistency_proof(size1, size)
            if size1 > 0:
                assert cproof == ref_proof(size1, d), (size1, size)
            verify_consistency(size1, size, cproof, tree.root(size1), root)


# --- Random properties ----------------------------------------------------------------

MAX_SIZE = 300


@pytest.fixture(scope="module")
def big_tree() -> tuple[list[bytes], MemoryTree]:
    leaves = distinct_leaves(MAX_SIZE, b"prop")
    return leaves, MemoryTree(leaves)


def test_inclusion_proofs_random(big_tree: tuple[list[bytes], MemoryTree]) -> None:
    leaves, tree = big_tree
    rng = random.Random(9162)
    for _ in range(400):
        size = rng.randint(1, MAX_SIZE)
        index = rng.randrange(size)
        root = root_from_leaves(leaves[:size])
        proof = tree.inclusion_proof(index, size)
        verify_inclusion(leaves[index], index, size, proof, root)
        # Tampering.
        if proof:
            k = rng.randrange(len(proof))
            bad = list(proof)
            bad[k] = flip(bad[k], rng.randrange(8))
            with pytest.raises(ProofError):
                verify_inclusion(leaves[index], index, size, bad, root)
            with pytest.raises(ProofError):
                verify_inclusion(leaves[index], index, size, proof[:-1], root)
        with pytest.raises(ProofError):
            verify_inclusion(leaves[index], index, size, [*proof, SOME_HASH], root)
        if size > 1:
            other = rng.choice([i for i in range(size) if i != index])
            with pytest.raises(ProofError):
                verify_inclusion(leaves[index], other, size, proof, root)
            with pytest.raises(ProofError):
                verify_inclusion(leaves[other], index, size, proof, root)
            with pytest.raises(ProofError):
                verify_inclusion(leaves[index], index, size, proof, tree.root(size - 1))
        if size < MAX_SIZE:
            with pytest.raises(ProofError):
                verify_inclusion(leaves[index], index, size + 1, proof, tree.root(size + 1))


def test_consistency_proofs_random(big_tree: tuple[list[bytes], MemoryTree]) -> None:
    leaves, tree = big_tree
    rng = random.Random(6962)
    for _ in range(400):
        size2 = rng.randint(1, MAX_SIZE)
        size1 = rng.randint(1, size2)
        root1, root2 = root_from_leaves(leaves[:size1]), root_from_leaves(leaves[:size2])
        proof = tree.consistency_proof(size1, size2)
        verify_consistency(size1, size2, proof, root1, root2)
        if size1 == size2:
            assert proof == []
            continue
        assert len(proof) <= 2 * size2.bit_length()
        k = rng.randrange(len(proof))
        bad = list(proof)
        bad[k] = flip(bad[k], rng.randrange(8))
        corruptions = [
            (size1, size2, bad, root1, root2),
            (size1, size2, proof[:-1], root1, root2),
            (size1, size2, [*proof, SOME_HASH], root1, root2),
            (size1, size2, proof, SOME_HASH, root2),
            (size1, size2, proof, root1, SOME_HASH),
            (size1, size2, proof, root2, root1),
            (size1, size2, proof, tree.root(size1 - 1), root2),
        ]
        if size1 + 1 < size2:
            corruptions.append((size1 + 1, size2, proof, tree.root(size1 + 1), root2))
        if size1 > 1:
            corruptions.append((size1 - 1, size2, proof, tree.root(size1 - 1), root2))
        if size2 < MAX_SIZE:
            corruptions.append((size1, size2 + 1, proof, root1, tree.root(size2 + 1)))
        for s1, s2, p, r1, r2 in corruptions:
            with pytest.raises(ProofError):
                verify_consistency(s1, s2, p, r1, r2)


def test_proofs_from_a_grown_tree_stay_valid() -> None:
    """Proofs for an old size, served after the tree grew, verify against the old root."""
    leaves = distinct_leaves(100, b"grow")
    tree = MemoryTree(leaves[:37])
    root37 = tree.root()
    tree.extend(leaves[37:])
    assert tree.root(37) == root37
    for index in range(37):
        verify_inclusion(leaves[index], index, 37, tree.inclusion_proof(index, 37), root37)
    verify_consistency(37, 100, tree.consistency_proof(37), root37, tree.root())


# --- Cost -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1_000_000, 2**20, 2**20 - 1, 2**20 + 1, 2**40 + 12345])
def test_proofs_need_logarithmically_many_nodes(size: int) -> None:
    calls: list[tuple[int, int]] = []

    def get_node(level: int, index: int) -> bytes:
        # Only complete perfect subtrees inside [0, size) may be requested.
        assert level >= 0
        assert index >= 0
        assert (index + 1) << level <= size
        calls.append((level, index))
        return hashlib.sha256(f"{level}/{index}".encode()).digest()

    bound = 2 * size.bit_length()
    rng = random.Random(size)
    for index in [0, 1, size // 2, size - 2, size - 1, rng.randrange(size)]:
        calls.clear()
        proof = inclusion_proof(index, size, get_node)
        assert len(proof) <= size.bit_length()
        assert len(calls) <= bound
    for size1 in [1, 2, size // 3, size - 1, size, rng.randrange(1, size)]:
        calls.clear()
        consistency_proof(size1, size, get_node)
        assert len(calls) <= bound
