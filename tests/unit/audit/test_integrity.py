"""Integrity at rest: edits of the stored log behind the service's back (a record, a
leaf hash made to match it, a tree node, the tree edge, a checkpoint) are found and the
first one reported; the start-up check covers the tail, the background passes the rest."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from services.audit.checkpoint import Checkpoint, NoteSigner, sign_checkpoint
from services.audit.integrity import IntegrityChecker
from services.audit.merkle import leaf_hash
from services.audit.store import AuditStore
from tests.support.audit_records import decision
from tests.support.waiting import wait_until_async

N = 1_000


@pytest.fixture
def db(tmp_path: Path, signer: NoteSigner) -> Path:
    path = tmp_path / "audit.db"
    store = AuditStore.open(path)
    for start in range(0, N, 250):
        store.append([decision(i) for i in range(start, start + 250)])
        size = store.tree_size()
        note = sign_checkpoint(signer, Checkpoint(signer.name, size, store.root()))
        store.save_checkpoint(size, note)
    store.close()
    return path


@pytest.fixture
def checker(db: Path, signer: NoteSigner) -> Iterator[IntegrityChecker]:
    c = IntegrityChecker(db, signer.verifier())
    yield c
    c.close()


def tamper(db: Path, *statements: tuple[str, tuple[object, ...]]) -> None:
    """Edits the database as someone with the file would (dropping the guards first)."""
    conn = sqlite3.connect(db)
    conn.execute("DROP TRIGGER IF EXISTS entries_no_update")
    for sql, args in statements:
        conn.execute(sql, args)
    conn.commit()
    conn.close()


def full_pass(checker: IntegrityChecker) -> None:
    for start in range(0, N, 4096):
        checker.check_entries(start, min(start + 4096, N))
    checker.check_checkpoints()


def record_of(db: Path, idx: int) -> bytes:
    conn = sqlite3.connect(db)
    (record,) = conn.execute("SELECT record FROM entries WHERE idx = ?", (idx,)).fetchone()
    conn.close()
    return bytes(record)


def test_an_untouched_log_passes(checker: IntegrityChecker) -> None:
    checker.check_startup()
    full_pass(checker)
    assert checker.first_mismatch is None
    assert REGISTRY.get_sample_value("roost_audit_integrity_ok") == 1


def test_an_edited_record_is_found(db: Path, checker: IntegrityChecker) -> None:
    edited = record_of(db, 900).replace(b"publish", b"ignore!")
    tamper(db, ("UPDATE entries SET record = ? WHERE idx = 900", (edited,)))
    checker.check_startup()
    assert checker.first_mismatch == "entry 900: the stored leaf hash does not match its record"
    assert REGISTRY.get_sample_value("roost_audit_integrity_ok") == 0


def test_a_record_with_a_matching_leaf_hash_is_found_by_the_tree(
    db: Path, checker: IntegrityChecker
) -> None:
    edited = record_of(db, 37).replace(b"publish", b"ignore!")
    tamper(
        db,
        (
            "UPDATE entries SET record = ?, leaf_hash = ? WHERE idx = 37",
            (edited, leaf_hash(edited)),
        ),
    )
    full_pass(checker)
    assert checker.first_mismatch == "tree node (4, 2) does not match its leaves"


def test_an_edited_upper_node_is_found(db: Path, checker: IntegrityChecker) -> None:
    tamper(db, ("UPDATE tree_nodes SET hash = ? WHERE level = 8 AND idx = 1", (bytes(32),)))
    full_pass(checker)
    assert checker.first_mismatch is not None
    assert "tree node (8, 1)" in checker.first_mismatch


def test_an_edited_checkpoint_is_found(
    db: Path, checker: IntegrityChecker, signer: NoteSigner
) -> None:
    wrong = sign_checkpoint(signer, Checkpoint(signer.name, 500, bytes(32)))
    forged = sign_checkpoint(
        NoteSigner.generate(signer.name), Checkpoint(signer.name, 750, bytes(32))
    )
    tamper(
        db,
        ("UPDATE checkpoints SET note = ? WHERE size = 500", (wrong,)),
        ("UPDATE checkpoints SET note = ? WHERE size = 750", (forged,)),
    )
    checker.check_checkpoints()
    assert (
        checker.first_mismatch
        == "the stored checkpoint of size 750 is not signed by this log's key"
    )
    assert checker.mismatches == 2


async def test_start_up_checks_the_tail_and_the_background_the_rest(
    db: Path, signer: NoteSigner
) -> None:
    edited = record_of(db, 5).replace(b"publish", b"ignore!")
    tamper(db, ("UPDATE entries SET record = ? WHERE idx = 5", (edited,)))
    checker = IntegrityChecker(db, signer.verifier())
    try:
        checker.check_startup(tail_entries=256)
        assert checker.first_mismatch is None  # entry 5 is not in the tail
        task = asyncio.create_task(checker.run(0, 3600))
        try:
            await wait_until_async(lambda: checker.first_mismatch, 10, "the background pass")
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert checker.first_mismatch == "entry 5: the stored leaf hash does not match its record"
    finally:
        checker.close()
