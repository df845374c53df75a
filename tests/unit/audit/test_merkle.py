"""RFC 9162 Merkle tree core: published vectors, reference cross-checks and properties."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

import pytest

from services.audit import records
from services.audit.merkle import (
    EMPTY_ROOT,
    CompactRange,
    MemoryTree,
    ProofError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_from_leaves,
    verify_consistency,
    verify_inclusion,
)

# --- Published test data -------------------------------------------------------------
# Copied from github.com/transparency-dev/merkle: testonly/constants.go (LeafInputs,
# NodeHashes, RootHashes, CompactTrees) and proof/verify_test.go (inclusionProofs,
# consistencyProofs). These are the RFC 6962 vectors also used by
# google/certificate-transparency. verify_test.go numbers leaves from 1; the
# inclusion vectors below are converted to 0-based indices.

LEAF_INPUTS = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]

NODE_HASHES = [
    [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
        "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
        "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
        "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
    ],
    [
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
    ],
    [
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    ["5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"],
]

# Indexed by tree size, 0..8.
ROOT_HASHES = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]

# CompactTrees(): (level, index) into NODE_HASHES of each size's right-edge subtrees.
COMPACT_TREES: list[list[tuple[int, int]]] = [
    [],
    [(0, 0)],
    [(1, 0)],
    [(1, 0), (0, 2)],
    [(2, 0)],
    [(2, 0), (0, 4)],
    [(2, 0), (1, 2)],
    [(2, 0), (1, 2), (0, 6)],
    [(3, 0)],
]

# (index, size, proof): 0-based leaf index.
INCLUSION_VECTORS: list[tuple[int, int, list[str]]] = [
    (0, 1, []),
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        1,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]

# (size1, size2, proof).
CONSISTENCY_VECTORS: list[tuple[int, int, list[str]]] = [
    (1, 1, []),
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        6,
        7,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
]

# From verify_test.go.
SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")

LEAF_HASHES = [leaf_hash(d) for d in LEAF_INPUTS]
ROOTS = [bytes.fromhex(h) for h in ROOT_HASHES]


def unhex(proof: Sequence[str]) -> list[bytes]:
    return [bytes.fromhex(h) for h in proof]


# --- RFC 9162 section 2.1 reference definitions, recursive and unoptimized ------------


def ref_mth(d: Sequence[bytes]) -> bytes:
    n = len(d)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return d[0]
    k = 1 << ((n - 1).bit_length() - 1)
    return node_hash(ref_mth(d[:k]), ref_mth(d[k:]))


def ref_path(m: int, d: Sequence[bytes]) -> list[bytes]:
    n = len(d)
    if n == 1:
        return []
    k = 1 << ((n - 1).bit_length() - 1)
    if m < k:
        return [*ref_path(m, d[:k]), ref_mth(d[k:])]
    return [*ref_path(m - k, d[k:]), ref_mth(d[:k])]


def ref_subproof(m: int, d: Sequence[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [ref_mth(d)]
    k = 1 << ((n - 1).bit_length() - 1)
    if m <= k:
        return [*ref_subproof(m, d[:k], b), ref_mth(d[k:])]
    return [*ref_subproof(m - k, d[k:], False), ref_mth(d[:k])]


def ref_proof(m: int, d: Sequence[bytes]) -> list[bytes]:
    return ref_subproof(m, d, True)


def distinct_leaves(n: int, salt: bytes = b"") -> list[bytes]:
    return [leaf_hash(salt + i.to_bytes(4, "big")) for i in range(n)]


def flip(h: bytes, bit: int = 3) -> bytes:
    return bytes([h[0] ^ (1 << bit)]) + h[1:]


# --- Hashing and roots ----------------------------------------------------------------


def test_hash_primitives() -> None:
    assert EMPTY_ROOT.hex() == ROOT_HASHES[0]
    assert leaf_hash(b"") == hashlib.sha256(b"\x00").digest()
    assert (
        node_hash(b"a" * 32, b"b" * 32) == hashlib.sha256(b"\x01" + b"a" * 32 + b"b" * 32).digest()
    )
    # Same leaf hash as the audit records module stores in entries.leaf_hash.
    assert leaf_hash(b"some record") == records.leaf_hash(b"some record")


@pytest.mark.parametrize("size", range(9))
def test_published_roots(size: int) -> None:
    want = ROOTS[size]
    assert root_from_leaves(LEAF_HASHES[:size]) == want
    assert ref_mth(LEAF_HASHES[:size]) == want
    compact = CompactRange()
    for h in LEAF_HASHES[:size]:
        compact.append(h)
    assert compact.root() == want
    assert MemoryTree(LEAF_HASHES).root(size) == want
    assert MemoryTree(LEAF_HASHES[:size]).root() == want


def test_published_node_hashes() -> None:
    tree = MemoryTree(LEAF_HASHES)
    for level, row in enumerate(NODE_HASHES):
        for index, want in enumerate(row):
            assert tree.get_node(level, index).hex() == want


@pytest.mark.parametrize("size", range(9))
def test_published_compact_trees(size: int) -> None:
    tree = MemoryTree(LEAF_HASHES[:size])
    compact = tree.compact_range()
    assert [h.hex() for h in compact.hashes] == [
        NODE_HASHES[lv][i] for lv, i in COMPACT_TREES[size]
    ]
    assert [(lv, i) for lv, i, _ in compact.nodes()] == COMPACT_TREES[size]


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


# --- CompactRange ---------------------------------------------------------------------


def test_compact_range_matches_every_size_and_round_trips() -> None:
    leaves = distinct_leaves(MAX_SIZE + 1, b"compact")
    compact = CompactRange()
    assert compact.size == 0
    assert compact.root() == EMPTY_ROOT
    for size in range(MAX_SIZE + 1):
        assert compact.size == size
        assert compact.root() == root_from_leaves(leaves[:size]) == ref_mth(leaves[:size])
        assert len(compact.hashes) == size.bit_count()
        blob = compact.to_bytes()
        assert len(blob) == 8 + 32 * size.bit_count()
        restored = CompactRange.from_bytes(blob)
        assert restored == compact
        assert CompactRange.from_hashes(size, compact.hashes) == compact
        # A restored range keeps growing exactly like the original.
        restored.append(leaves[size])
        compact.append(leaves[size])
        assert restored == compact
        assert restored.root() == compact.root()


def test_compact_range_visitor_reports_every_perfect_subtree() -> None:
    leaves = distinct_leaves(77, b"visit")
    seen: dict[tuple[int, int], bytes] = {}

    def visit(level: int, index: int, h: bytes) -> None:
        assert (level, index) not in seen
        seen[(level, index)] = h

    compact = CompactRange()
    for h in leaves:
        compact.append(h, visit)
    tree = MemoryTree(leaves)
    want = {
        (level, index): tree.get_node(level, index)
        for level in range(7)
        for index in range(77 >> level)
    }
    assert seen == want

    # A store can serve proofs straight from the visited nodes.
    def get_node(level: int, index: int) -> bytes:
        return seen[(level, index)]

    assert inclusion_proof(40, 77, get_node) == tree.inclusion_proof(40)
    assert consistency_proof(13, 77, get_node) == tree.consistency_proof(13)
    # nodes() names each right-edge subtree by (level, index).
    for level, index, h in compact.nodes():
        assert seen[(level, index)] == h


def test_compact_range_rejects_malformed_state() -> None:
    with pytest.raises(ValueError):
        CompactRange.from_bytes(b"\x00" * 7)
    with pytest.raises(ValueError):
        CompactRange.from_bytes((3).to_bytes(8, "big") + b"\x00" * 32)  # size 3 needs 2
    with pytest.raises(ValueError):
        CompactRange.from_bytes((1).to_bytes(8, "big") + b"\x00" * 33)
    with pytest.raises(ValueError):
        CompactRange.from_hashes(2, [SOME_HASH, SOME_HASH])
    with pytest.raises(ValueError):
        CompactRange.from_hashes(1, [b"short"])
    with pytest.raises(ValueError):
        CompactRange.from_hashes(-1, [])
    with pytest.raises(ValueError):
        CompactRange().append(b"short")
    assert CompactRange.from_bytes(bytes(8)) == CompactRange()


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


def test_extend_matches_append_leaf_by_leaf() -> None:
    leaves = [hashlib.sha256(bytes([i])).digest() for i in range(77)]
    one, many = CompactRange(), CompactRange()
    many.extend(leaves[:5])
    for leaf in leaves[:5]:
        one.append(leaf)
    visited: list[tuple[int, int, bytes]] = []
    for leaf in leaves[5:]:
        one.append(leaf, lambda level, index, h: visited.append((level, index, h)))
    nodes = many.extend(leaves[5:])
    assert one == many
    assert nodes == [v for v in visited if v[0] > 0]
    with pytest.raises(ValueError, match="32 bytes"):
        CompactRange().extend([b"short"])
