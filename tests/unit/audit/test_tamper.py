"""Tampering with the audit database is caught by an auditor holding an earlier checkpoint.

The auditor took a signed checkpoint (note) of the first ``HELD`` entries. The attacker
then has the SQLite file and drops the append-only triggers, as a real one would. For
each scenario, the hub exports a bundle from the tampered database, either against
the auditor's held note or, where the attacker covers their tracks by rebuilding the
Merkle tree, against a fresh checkpoint re-signed with the hub's own key (the attacker
has the key). ``verify_bundle`` must fail with the expected reason.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.audit import records, tree
from services.audit.bundle_format import ExportFilters
from services.audit.checkpoint import Checkpoint, NoteSigner, sign_checkpoint
from services.audit.export import iter_bundle
from services.audit.merkle import leaf_hash
from services.audit.store import AuditStore
from services.audit.verify import BundleError, verify_bundle
from services.kit.errors import FailedPrecondition
from tests.support.audit_records import decision

ORIGIN = "roost.local/hub/hub-test"
HELD = 16  # entries covered by the auditor's checkpoint
GROW = 4  # entries the hub appends after the tampering, before re-signing

_CONTENT_COLUMNS = (
    "decision_id",
    "decided_at_us",
    "entity_id",
    "model_name",
    "model_version",
    "action",
    "record",
    "leaf_hash",
)


@dataclass(frozen=True)
class Hub:
    db: Path
    signer: NoteSigner
    # The auditor's checkpoint of the first HELD entries.
    held: str


@pytest.fixture
def hub(tmp_path: Path, signer: NoteSigner) -> Hub:
    db = tmp_path / "audit.db"
    store = AuditStore.open(db)
    store.append([decision(i) for i in range(HELD)])
    held = sign(store, signer)
    store.close()
    return Hub(db, signer, held)


def sign(store: AuditStore, signer: NoteSigner) -> str:
    return sign_checkpoint(signer, Checkpoint(ORIGIN, store.tree_size(), store.root()))


def export(store: AuditStore, note: str, consistency_from: list[int]) -> list[bytes]:
    chunks = iter_bundle(
        store, note=note, origin=ORIGIN, filters=ExportFilters(), consistency_from=consistency_from
    )
    return b"".join(chunks).splitlines(keepends=True)


# ------------------------------------------------------------------ the attacker's tools


def attacker(db: Path) -> sqlite3.Connection:
    """A raw connection without the append-only triggers."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("DROP TRIGGER IF EXISTS entries_no_update")
    conn.execute("DROP TRIGGER IF EXISTS entries_no_delete")
    return conn


def forged(i: int) -> records.PreparedRecord:
    """Decision i as the attacker would have liked it: another action."""
    return records.prepare([decision(i, action="lock.unlock")])[0]


def rebuild_tree(conn: sqlite3.Connection) -> None:
    """Recomputes tree_nodes and tree_state from the (tampered) entries."""
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("DELETE FROM tree_nodes")
    conn.execute("DELETE FROM tree_state")
    tree.backfill(conn)
    conn.execute("COMMIT")


def edit_record(db: Path) -> None:
    """(a) New record bytes for entry 5; its leaf hash and the tree are left alone."""
    conn = attacker(db)
    conn.execute("UPDATE entries SET record = ? WHERE idx = 5", (forged(5).record,))
    conn.close()


def edit_record_and_leaf(db: Path, *, rebuild: bool = False) -> None:
    """(b) New record and matching leaf hash for entry 5 (and the tree, if ``rebuild``)."""
    rec = forged(5)
    conn = attacker(db)
    conn.execute(
        "UPDATE entries SET record = ?, leaf_hash = ?, action = ? WHERE idx = 5",
        (rec.record, leaf_hash(rec.record), rec.action),
    )
    if rebuild:
        rebuild_tree(conn)
    conn.close()


def swap_rows(db: Path, *, rebuild: bool = False) -> None:
    """(c) Entries 2 and 9 trade places (content and inputs), reordering history."""
    cols = ", ".join(_CONTENT_COLUMNS)
    sets = ", ".join(f"{c} = ?" for c in _CONTENT_COLUMNS)
    conn = attacker(db)
    a = conn.execute(f"SELECT {cols} FROM entries WHERE idx = 2").fetchone()
    b = conn.execute(f"SELECT {cols} FROM entries WHERE idx = 9").fetchone()
    ia = conn.execute("SELECT data FROM inputs WHERE idx = 2").fetchone()
    ib = conn.execute("SELECT data FROM inputs WHERE idx = 9").fetchone()
    conn.execute("BEGIN")
    conn.execute("UPDATE entries SET decision_id = 'moving' WHERE idx = 2")
    conn.execute(f"UPDATE entries SET {sets} WHERE idx = 9", (*a,))
    conn.execute(f"UPDATE entries SET {sets} WHERE idx = 2", (*b,))
    conn.execute("UPDATE inputs SET data = ? WHERE idx = 9", ia)
    conn.execute("UPDATE inputs SET data = ? WHERE idx = 2", ib)
    conn.execute("COMMIT")
    if rebuild:
        rebuild_tree(conn)
    conn.close()


def edit_inputs(db: Path) -> None:
    """(d) Other household inputs stored for entry 3 (the record keeps its digest)."""
    other = decision(3).inputs
    other.tensor.float_values[0] = 400.0
    conn = attacker(db)
    conn.execute(
        "UPDATE inputs SET data = ? WHERE idx = 3", (other.SerializeToString(deterministic=True),)
    )
    conn.close()


def delete_row(db: Path) -> None:
    """(e, first step) Entry 6 deleted, leaving a gap."""
    conn = attacker(db)
    conn.execute("DELETE FROM entries WHERE idx = 6")
    conn.execute("DELETE FROM inputs WHERE idx = 6")
    conn.close()


def delete_row_and_cover_up(db: Path) -> None:
    """(e) Entry 6 deleted, later rows renumbered down, the tree rebuilt."""
    delete_row(db)
    conn = attacker(db)
    conn.execute("BEGIN")
    for table in ("entries", "inputs"):
        # Two steps, so that no intermediate idx collides with an existing one.
        conn.execute(f"UPDATE {table} SET idx = -idx WHERE idx > 6")
        conn.execute(f"UPDATE {table} SET idx = -idx - 1 WHERE idx < 0")
    conn.execute("COMMIT")
    rebuild_tree(conn)
    conn.close()


def rewrite_history(db: Path) -> None:
    """(f) The whole log replaced by another history of the same length."""
    for suffix in ("", "-wal", "-shm"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)
    store = AuditStore.open(db)
    store.append([decision(i, action="lock.unlock") for i in range(HELD)])
    store.close()


# ------------------------------------------------------------------ scenarios


@dataclass(frozen=True)
class Scenario:
    tamper: Callable[[Path], None]
    # True: the attacker rebuilt the tree; the hub goes on appending GROW entries (unless
    # `grow` says otherwise) and re-signs a checkpoint of the current tree with its key.
    # False: the export is made against the auditor's held checkpoint.
    resign: bool
    reason: str
    grow: int = GROW


INCLUSION = "inclusion proof does not lead to the checkpoint root: the entry was altered"
REWRITTEN = (
    r"^line 1: previous checkpoint #1 \(tree size 16\) is not consistent with the bundle's"
    r" checkpoint \(tree size {size}\): the log was rewritten since then"
)

SCENARIOS = {
    "a-edit-record": Scenario(edit_record, False, rf"^line 7 \(index 5\): {INCLUSION}"),
    # Proofs fold small subtrees from the stored leaves, so the forged leaf hash enters
    # the path of every entry of its 8-leaf block: the first of them fails first.
    "b-edit-record-and-leaf-hash": Scenario(
        edit_record_and_leaf, False, rf"^line 2 \(index 0\): {INCLUSION}"
    ),
    "b-edit-record-leaf-hash-rebuild-resign": Scenario(
        lambda db: edit_record_and_leaf(db, rebuild=True), True, REWRITTEN.format(size=20)
    ),
    "c-swap-rows": Scenario(swap_rows, False, rf"^line 2 \(index 0\): {INCLUSION}"),
    "c-swap-rows-rebuild-resign": Scenario(
        lambda db: swap_rows(db, rebuild=True), True, REWRITTEN.format(size=20)
    ),
    "d-edit-inputs": Scenario(
        edit_inputs,
        False,
        r"^line 5 \(index 3\): inputs do not match the record's inputs_digest:"
        " the stored inputs were altered$",
    ),
    "e-delete-row-renumber-rebuild-resign": Scenario(
        delete_row_and_cover_up, True, REWRITTEN.format(size=19)
    ),
    # Re-signed before the log grew back past the held size: the log visibly shrank.
    "e-delete-row-renumber-rebuild-resign-smaller": Scenario(
        delete_row_and_cover_up,
        True,
        # A fresh export, and still smaller: the message names the rollback too, not
        # only "export again".
        r"^previous checkpoint #1 has tree size 16, larger than the bundle's 15\. .*"
        r"or the log was rolled back or forked below tree size 16 .*: a serious finding",
        grow=0,
    ),
    "f-rewrite-history-resign": Scenario(rewrite_history, True, REWRITTEN.format(size=20)),
}


@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_tampering_is_detected(hub: Hub, scenario: Scenario) -> None:
    scenario.tamper(hub.db)
    store = AuditStore.open(hub.db)
    try:
        if scenario.resign:
            store.append([decision(i) for i in range(1000, 1000 + scenario.grow)])
            # The tree no longer has the held checkpoint's root: the hub cannot even
            # export against it.
            with pytest.raises(FailedPrecondition):
                export(store, hub.held, [])
            note = sign(store, hub.signer)
            size = store.tree_size()
            lines = export(store, note, [HELD] if size >= HELD else [])
        else:
            lines = export(store, hub.held, [])
    finally:
        store.close()
    with pytest.raises(BundleError, match=scenario.reason):
        verify_bundle(lines, hub.signer.verifier(), previous_checkpoints=[hub.held])


def test_deleted_row_is_refused_by_the_store(hub: Hub) -> None:
    delete_row(hub.db)
    with pytest.raises(FailedPrecondition, match="the log was tampered with or is corrupt"):
        AuditStore.open(hub.db)
    with pytest.raises(FailedPrecondition, match="the log was tampered with or is corrupt"):
        AuditStore.open(hub.db, read_only=True)


@pytest.mark.parametrize("resign", [False, True], ids=["held-checkpoint", "grown-and-resigned"])
def test_untampered_log_verifies(hub: Hub, resign: bool) -> None:
    store = AuditStore.open(hub.db)
    try:
        note = hub.held
        if resign:
            store.append([decision(i) for i in range(1000, 1000 + GROW)])
            note = sign(store, hub.signer)
        lines = export(store, note, [HELD])
    finally:
        store.close()
    report = verify_bundle(lines, hub.signer.verifier(), previous_checkpoints=[hub.held])
    assert report.entries == report.tree_size == (HELD + GROW if resign else HELD)
    assert report.complete
    assert report.consistency_checked == (HELD,)
