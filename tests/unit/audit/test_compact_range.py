"""Growing RFC 9162 trees: CompactRange (the right edge a store persists), MemoryTree
and root_from_leaves, against the published vectors and the RFC's definitions."""

from __future__ import annotations

import hashlib

import pytest

from services.audit.compact_range import CompactRange, MemoryTree, root_from_leaves
from services.audit.merkle import EMPTY_ROOT, consistency_proof, inclusion_proof
from tests.support.merkle_vectors import (
    COMPACT_TREES,
    LEAF_HASHES,
    NODE_HASHES,
    ROOTS,
    SOME_HASH,
    distinct_leaves,
    ref_mth,
)

MAX_SIZE = 300


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


@pytest.mark.parametrize("min_level", [1, 4])
def test_extend_min_level_keeps_exactly_the_higher_nodes(min_level: int) -> None:
    leaves = [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(300)]
    visited: list[tuple[int, int, bytes]] = []
    one_by_one = CompactRange()
    for leaf in leaves:
        one_by_one.append(leaf, lambda level, index, h: visited.append((level, index, h)))
    batched = CompactRange()
    nodes = batched.extend(leaves[:77], min_level) + batched.extend(leaves[77:], min_level)
    assert nodes == [node for node in visited if node[0] >= min_level]
    assert batched == one_by_one
    # A bad hash mid-batch leaves a consistent (partly extended) range.
    partial = CompactRange()
    with pytest.raises(ValueError):
        partial.extend([*leaves[:5], b"short"], min_level)
    assert partial == CompactRange.from_hashes(5, one_by_one_prefix(leaves[:5]))


def one_by_one_prefix(leaves: list[bytes]) -> tuple[bytes, ...]:
    compact = CompactRange()
    for leaf in leaves:
        compact.append(leaf)
    return compact.hashes
