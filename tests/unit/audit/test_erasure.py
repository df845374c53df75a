"""Right to erasure and retention: stored inputs go, leaves and proofs stay, and the
erasure itself is logged."""

from __future__ import annotations

import asyncio
import sqlite3
import struct
from pathlib import Path

import pytest

from roost.audit.v1 import audit_service_pb2 as pb
from services.audit import erasure
from services.audit.checkpoint import NoteSigner
from services.audit.log import AuditLog
from services.audit.merkle import verify_inclusion
from services.audit.servicer import run_retention
from services.audit.store import AuditStore
from services.kit.errors import FailedPrecondition, InvalidArgument, NotFound
from tests.support.audit_records import T0_US, decision

# A household value no other byte of the log contains: 612.0 is the CO2 reading in
# `decision()`; search for its float32 encoding next to the motion flag.
SECRET = struct.pack("<ff", 612.0, 1.0)


def files_contain(db: Path, needle: bytes) -> bool:
    return any(
        p.exists() and needle in p.read_bytes() for p in (db, db.with_name(db.name + "-wal"))
    )


def test_redaction_erases_inputs_keeps_the_leaf_and_logs_itself(db: Path) -> None:
    store = AuditStore.open(db)
    store.append([decision(i) for i in range(5)])
    target = store.get(decision(2).decision_id)
    root_before = store.root(5)

    index, redacted_at_us, already = store.redact_inputs(
        target.decision.decision_id, "erasure request #12", now_us=T0_US + 99_000_000
    )

    assert (index, redacted_at_us, already) == (5, T0_US + 99_000_000, False)
    after = store.get(target.decision.decision_id)
    assert after.inputs_redacted
    assert not after.decision.HasField("inputs")
    # The leaf, and so every proof, is untouched.
    assert (after.record, after.leaf_hash) == (target.record, target.leaf_hash)
    assert store.root(5) == root_before
    verify_inclusion(after.leaf_hash, 2, 6, store.inclusion_proof(2, 6), store.root())
    # The deletion is itself an entry of the log.
    logged = store.get(erasure.redaction_id(target.decision.decision_id))
    assert logged.index == 5
    d = logged.decision
    assert d.actor == pb.ACTOR_ADMIN
    assert d.action == erasure.REDACT_ACTION
    assert d.output_label == target.decision.decision_id
    assert d.inputs_digest == target.decision.inputs_digest
    assert d.policy.reason == "erasure request #12"
    # Redacting again changes nothing and reports the first redaction.
    assert store.redact_inputs(target.decision.decision_id, "again", now_us=T0_US) == (
        5,
        T0_US + 99_000_000,
        True,
    )
    assert store.size() == 6
    store.close()


def test_redacted_bytes_leave_the_database_files(db: Path) -> None:
    store = AuditStore.open(db)
    store.append([decision(0)])
    store._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert files_contain(db, SECRET)
    store.redact_inputs(decision(0).decision_id, "erasure", now_us=T0_US)
    store.close()
    assert not files_contain(db, SECRET)


def test_redaction_errors_are_precise(db: Path) -> None:
    store = AuditStore.open(db)
    store.append([decision(0), decision(1, with_inputs=False)])
    with pytest.raises(NotFound, match="no such decision"):
        store.redact_inputs("nope", "erasure", now_us=T0_US)
    with pytest.raises(FailedPrecondition, match="no stored inputs"):
        store.redact_inputs(decision(1).decision_id, "erasure", now_us=T0_US)
    for reason, problem in (("", "required"), ("a\nb", "single line"), ("x" * 501, "at most")):
        with pytest.raises(InvalidArgument, match=problem):
            store.redact_inputs(decision(0).decision_id, reason, now_us=T0_US)
    assert store.size() == 2
    store.close()


def test_clients_cannot_append_admin_entries(db: Path) -> None:
    store = AuditStore.open(db)
    forged = decision(0)
    forged.actor = pb.ACTOR_ADMIN
    with pytest.raises(InvalidArgument, match=r"decisions\[0\]\.actor: ACTOR_ADMIN"):
        store.append([forged])
    assert store.size() == 0
    store.close()


def test_retention_prunes_old_inputs_in_one_logged_run(db: Path) -> None:
    store = AuditStore.open(db)
    store.append([decision(i) for i in range(10)])  # decided at T0 + i seconds
    leaves = [store.get(decision(i).decision_id).leaf_hash for i in range(10)]

    pruned, index = store.prune_inputs(T0_US + 6_000_000, "keep 30 days", "hub-test", T0_US)

    assert (pruned, index) == (6, 10)
    for i in range(10):
        entry = store.get(decision(i).decision_id)
        assert entry.inputs_redacted == (i < 6)
        assert entry.leaf_hash == leaves[i]
        verify_inclusion(entry.leaf_hash, i, 11, store.inclusion_proof(i, 11), store.root())
    run = store.get(f"retention-{T0_US}").decision
    assert run.actor == pb.ACTOR_ADMIN
    assert run.action == erasure.PRUNE_ACTION
    assert list(run.output_values) == [6.0]
    assert run.entity_id == erasure.LOG_ENTITY
    assert not run.HasField("model")
    # Nothing more is due: no new entry.
    assert store.prune_inputs(T0_US + 6_000_000, "keep", "hub-test", T0_US + 1) == (0, None)
    erased_by = (
        sqlite3.connect(db)
        .execute("SELECT DISTINCT erased_by FROM inputs WHERE data IS NULL")
        .fetchall()
    )
    assert erased_by == [(10,)]
    store.close()


def test_old_checkpoints_are_thinned_to_one_per_day(db: Path) -> None:
    store = AuditStore.open(db)
    day = 86_400_000_000
    for size, created in ((1, 0), (2, 10), (3, day + 5), (4, day + 9), (5, 3 * day)):
        store._conn.execute(
            "INSERT INTO checkpoints (size, note, created_at_us) VALUES (?, 'n', ?)",
            (size, created),
        )
    assert store.thin_checkpoints(keep_after_us=2 * day) == 2
    sizes = [r[0] for r in store._conn.execute("SELECT size FROM checkpoints ORDER BY size")]
    assert sizes == [2, 4, 5]
    store.close()


async def test_log_reuses_its_last_checkpoint_after_a_restart(db: Path) -> None:
    signer = NoteSigner.generate("roost.local/hub/test")
    async with await AuditLog.open(db) as log:
        await log.append([decision(0)])
        first = await log.checkpoint(signer)
    async with await AuditLog.open(db) as log:
        again = await log.checkpoint(signer)
        assert again == first
        assert log.checkpoints_signed == 0


async def test_retention_task_prunes_and_keeps_running(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with await AuditLog.open(db) as log:
        await log.append([decision(i) for i in range(3)])  # decided in 2026, long ago
        # Each run ends by thinning checkpoints: count the runs that completed.
        runs = 0
        two_runs = asyncio.Event()
        thin = log.thin_checkpoints

        async def counted_thin(keep_after_us: int) -> int:
            nonlocal runs
            deleted = await thin(keep_after_us)
            runs += 1
            if runs >= 2:
                two_runs.set()
            return deleted

        monkeypatch.setattr(log, "thin_checkpoints", counted_thin)
        task = asyncio.create_task(
            run_retention(
                log,
                hub_id="hub-test",
                inputs_retention_days=1,
                checkpoint_keep_days=7,
                interval_seconds=0.01,
            )
        )
        await asyncio.wait_for(two_runs.wait(), timeout=30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        entries = [await log.get(decision(i).decision_id) for i in range(3)]
        assert all(entry.inputs_redacted for entry in entries)
        assert await log.size() == 4  # one retention entry, however many runs
