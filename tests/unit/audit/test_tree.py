"""The audit store's Merkle tree: roots, proofs, persistence, upgrade, tampering, checkpoints."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from roost.audit.v1 import audit_service_pb2 as pb
from services.audit import schema, tree
from services.audit.checkpoint import (
    Checkpoint,
    NoteVerifier,
    export_vkey,
    load_or_create_signer,
    sign_checkpoint,
    verify_checkpoint,
)
from services.audit.compact_range import CompactRange, root_from_leaves
from services.audit.log import AuditLog
from services.audit.merkle import (
    EMPTY_ROOT,
    ProofError,
    verify_consistency,
    verify_inclusion,
)
from services.audit.store import AuditStore
from services.kit.errors import FailedPrecondition, InvalidArgument, NotFound

T0_US = 1_780_000_000_000_000
ORIGIN = "roost.local/hub/test"


def decision(i: int) -> pb.Decision:
    d = pb.Decision(
        decision_id=f"00000000-0000-4000-8000-{i:012d}",
        hub_id="hub-test",
        entity_id="binary_sensor.kitchen_occupancy",
        output_values=[0.1, 0.9],
        output_label="occupied",
        confidence=0.9,
        action="publish",
        actor=pb.ACTOR_AUTOMATIC,
    )
    d.model.name, d.model.version, d.model.sha256 = "occupancy", "1.0.0", "ab" * 32
    d.policy.policy_id, d.policy.verdict = "occupancy.threshold", pb.POLICY_VERDICT_ALLOWED
    d.decided_at.FromMicroseconds(T0_US + i * 1_000_000)
    return d


def fill(store: AuditStore, n: int, start: int = 0) -> None:
    """Appends decisions start..start+n-1 in group commits of uneven sizes."""
    i, step = start, 1
    while i < start + n:
        k = min(step, start + n - i)
        store.append([decision(j) for j in range(i, i + k)])
        i += k
        step = step % 7 + 2


def leaves(path: Path) -> list[bytes]:
    conn = sqlite3.connect(path)
    try:
        return [bytes(r[0]) for r in conn.execute("SELECT leaf_hash FROM entries ORDER BY idx")]
    finally:
        conn.close()


SIZES = (1, 2, 3, 5, 8, 13, 16, 31, 37)


def test_roots_and_proofs_match_the_reference(db: Path) -> None:
    store = AuditStore.open(db)
    try:
        assert store.root() == EMPTY_ROOT
        assert store.root(0) == EMPTY_ROOT
        fill(store, 37)
        hashes = leaves(db)
        assert len(hashes) == 37 == store.tree_size()
        assert store.root() == root_from_leaves(hashes)
        for size in SIZES:
            root = store.root(size)
            assert root == root_from_leaves(hashes[:size])
            for index in range(size):
                proof = store.inclusion_proof(index, size)
                verify_inclusion(hashes[index], index, size, proof, root)
            for size1 in range(size + 1):
                proof = store.consistency_proof(size1, size)
                verify_consistency(size1, size, proof, store.root(size1), root)
        # The writer and a reader agree.
        reader = AuditStore.open(db, read_only=True)
        try:
            assert reader.root() == store.root()
            assert reader.inclusion_proof(4, 13) == store.inclusion_proof(4, 13)
            assert reader.consistency_proof(5, 31) == store.consistency_proof(5, 31)
        finally:
            reader.close()
    finally:
        store.close()


def test_tree_nodes_are_about_one_row_per_eight_leaves(db: Path) -> None:
    store = AuditStore.open(db)
    fill(store, 64)
    store.close()
    conn = sqlite3.connect(db)
    (count,) = conn.execute("SELECT COUNT(*) FROM tree_nodes").fetchone()
    conn.close()
    # Subtrees of 16, 32 and 64 leaves; smaller ones are folded from the leaves.
    assert count == 4 + 2 + 1


def test_bad_sizes_and_indexes_name_the_field(db: Path) -> None:
    store = AuditStore.open(db)
    try:
        fill(store, 5)
        with pytest.raises(InvalidArgument, match=r"^tree_size:"):
            store.root(6)
        with pytest.raises(InvalidArgument, match=r"^tree_size:"):
            store.inclusion_proof(0, 6)
        with pytest.raises(InvalidArgument, match=r"^index:"):
            store.inclusion_proof(3, 3)
        with pytest.raises(InvalidArgument, match=r"^index:"):
            store.inclusion_proof(-1, 3)
        with pytest.raises(InvalidArgument, match=r"^second_tree_size:"):
            store.consistency_proof(1, 9)
        with pytest.raises(InvalidArgument, match=r"^first_tree_size:"):
            store.consistency_proof(4, 3)
        with pytest.raises(NotFound, match=r"^decision_id:"):
            store.index_of("nope")
        assert store.index_of(decision(3).decision_id) == 3
    finally:
        store.close()


def test_reopen_reads_tree_state_without_recomputing(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = AuditStore.open(db)
    fill(store, 21)
    root = store.root()
    store.close()

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("the tree was recomputed on open")

    with monkeypatch.context() as m:
        m.setattr(CompactRange, "append", forbidden)
        m.setattr(tree, "backfill", forbidden)
        reopened = AuditStore.open(db)
        assert reopened.root() == root
        reopened.close()
    # And appends continue from the persisted edge.
    reopened = AuditStore.open(db)
    fill(reopened, 10, start=21)
    assert reopened.root() == root_from_leaves(leaves(db))
    assert reopened.root(21) == root
    reopened.close()


def test_v1_database_is_backfilled_on_upgrade(db: Path) -> None:
    store = AuditStore.open(db)
    fill(store, 29)
    root = store.root()
    store.close()
    # Turn it back into a schema v1 database.
    conn = sqlite3.connect(db, isolation_level=None)
    for table in ("tree_nodes", "tree_state", "checkpoints"):
        conn.execute(f"DROP TABLE {table}")
    conn.execute("ALTER TABLE inputs DROP COLUMN erased_by")  # added by v3
    conn.execute("ALTER TABLE entries DROP COLUMN logged_at_us")  # added by v5
    conn.execute("PRAGMA user_version = 1")
    conn.close()

    upgraded = AuditStore.open(db)
    try:
        assert upgraded.root() == root == root_from_leaves(leaves(db))
        proof = upgraded.inclusion_proof(7, 29)
        verify_inclusion(leaves(db)[7], 7, 29, proof, root)
    finally:
        upgraded.close()


def test_v1_schema_from_the_first_migration_only_upgrades(db: Path) -> None:
    db.parent.mkdir(parents=True)
    conn = sqlite3.connect(db, isolation_level=None)
    for statement in schema._MIGRATIONS[0]:
        assert isinstance(statement, str)
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    assert schema.migrate(conn) == schema.SCHEMA_VERSION
    assert conn.execute("SELECT size FROM tree_state").fetchone() == (0,)
    conn.close()
    store = AuditStore.open(db)
    fill(store, 3)
    assert store.root() == root_from_leaves(leaves(db))
    store.close()


def _tamper(db: Path, *statements: str) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("DROP TRIGGER IF EXISTS entries_no_update")
    conn.execute("DROP TRIGGER IF EXISTS entries_no_delete")
    for statement in statements:
        conn.execute(statement)
    conn.close()


@pytest.mark.parametrize(
    "statements",
    [
        ("DELETE FROM tree_state",),
        ("UPDATE tree_state SET size = size - 1",),
        ("DELETE FROM entries WHERE idx = 3", "DELETE FROM inputs WHERE idx = 3"),
        ("DELETE FROM entries WHERE idx = (SELECT MAX(idx) FROM entries)",),
        ("UPDATE tree_state SET compact = x'00'",),
    ],
    ids=["state-deleted", "state-size", "entry-deleted", "last-entry-deleted", "state-garbled"],
)
def test_tampering_with_state_or_entries_fails_open(db: Path, statements: tuple[str, ...]) -> None:
    store = AuditStore.open(db)
    fill(store, 10)
    store.close()
    _tamper(db, *statements)
    with pytest.raises(FailedPrecondition, match="audit database"):
        AuditStore.open(db).close()


def test_edited_entry_fails_proofs_against_a_signed_checkpoint(tmp_path: Path, db: Path) -> None:
    signer = load_or_create_signer(tmp_path / "checkpoint.key", ORIGIN)
    verifier = NoteVerifier.from_vkey(export_vkey(signer))
    store = AuditStore.open(db)
    fill(store, 12)
    note = sign_checkpoint(signer, Checkpoint(ORIGIN, store.tree_size(), store.root()))
    original = leaves(db)
    store.close()

    cp = verify_checkpoint(verifier, note, ORIGIN)
    _tamper(db, "UPDATE entries SET leaf_hash = zeroblob(32) WHERE idx = 5")
    store = AuditStore.open(db)  # counts still agree: only proofs can tell
    try:
        tampered = leaves(db)
        # Small subtrees are folded from the stored leaves, so the forged leaf breaks the
        # proof of every entry whose path crosses its block, including its own.
        for index in range(cp.size):
            proof = store.inclusion_proof(index, cp.size)
            with pytest.raises(ProofError):
                verify_inclusion(tampered[index], index, cp.size, proof, cp.root_hash)
        assert original[9] == tampered[9]
        # The edge state was not touched, so the current root still matches.
        assert store.root(cp.size) == cp.root_hash
    finally:
        store.close()


def test_edited_tree_state_fails_against_a_signed_checkpoint(tmp_path: Path, db: Path) -> None:
    signer = load_or_create_signer(tmp_path / "checkpoint.key", ORIGIN)
    store = AuditStore.open(db)
    fill(store, 12)
    note = sign_checkpoint(signer, Checkpoint(ORIGIN, store.tree_size(), store.root()))
    store.close()
    cp = verify_checkpoint(NoteVerifier.from_vkey(export_vkey(signer)), note, ORIGIN)
    other = CompactRange()
    for h in leaves(db)[::-1]:
        other.append(h)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("UPDATE tree_state SET compact = ?", (other.to_bytes(),))
    conn.close()
    store = AuditStore.open(db)  # the state is read, not recomputed
    try:
        assert store.root() != cp.root_hash
        with pytest.raises(ProofError):
            verify_consistency(
                cp.size, 12, store.consistency_proof(cp.size), cp.root_hash, store.root()
            )
    finally:
        store.close()


def test_log_signs_verifiable_checkpoints_and_caches_them(tmp_path: Path) -> None:
    signer = load_or_create_signer(tmp_path / "checkpoint.key", ORIGIN)
    verifier = NoteVerifier.from_vkey(export_vkey(signer))

    async def scenario() -> None:
        async with await AuditLog.open(tmp_path / "audit.db") as log:
            first = await log.checkpoint(signer)
            assert first.size == 0
            assert first.root_hash == EMPTY_ROOT
            await log.append([decision(i) for i in range(6)])
            cp = await log.checkpoint(signer)
            assert await log.checkpoint(signer) is cp
            assert log.checkpoints_signed == 2
            parsed = verify_checkpoint(verifier, cp.note, ORIGIN)
            assert (parsed.size, parsed.root_hash) == (6, cp.root_hash)
            assert cp.root_hash == root_from_leaves(leaves(tmp_path / "audit.db"))
            index, proof = await log.inclusion_proof(decision(4).decision_id, cp.size)
            assert index == 4
            verify_inclusion(leaves(tmp_path / "audit.db")[4], 4, 6, proof, cp.root_hash)
            await log.append([decision(i) for i in range(6, 9)])
            cp2 = await log.checkpoint(signer)
            proof = await log.consistency_proof(cp.size, cp2.size)
            verify_consistency(cp.size, cp2.size, proof, cp.root_hash, cp2.root_hash)
            assert await log.root(6) == cp.root_hash
        conn = sqlite3.connect(tmp_path / "audit.db")
        rows = conn.execute("SELECT size, note FROM checkpoints ORDER BY size").fetchall()
        conn.close()
        assert [size for size, _ in rows] == [0, 6, 9]
        assert rows[-1][1] == cp2.note

    asyncio.run(scenario())
