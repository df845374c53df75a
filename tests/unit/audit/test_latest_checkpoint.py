"""No forks: the last signed checkpoint, kept outside the database, refuses a database
that does not extend it (an older copy put back, an edited history), at start and
before signing; growth, restarts and crashes between the two writes are fine."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from services.audit.checkpoint import Checkpoint, NoteSigner, sign_checkpoint
from services.audit.latest_checkpoint import FILE_NAME, ForkError, LatestCheckpoint
from services.audit.log import AuditLog
from services.audit.store import AuditStore
from services.kit.errors import FailedPrecondition
from tests.support.audit_records import decision


def latest_of(tmp_path: Path, signer: NoteSigner) -> LatestCheckpoint:
    return LatestCheckpoint(tmp_path / "key" / FILE_NAME, signer.verifier())


async def grow(db: Path, latest: LatestCheckpoint, signer: NoteSigner, ids: range) -> int:
    """Appends ``ids`` and signs a checkpoint; returns its size."""
    async with await AuditLog.open(db, latest=latest) as log:
        await log.append([decision(i) for i in ids])
        return (await log.checkpoint(signer)).size


async def test_growth_and_restarts_are_fine(tmp_path: Path, signer: NoteSigner) -> None:
    db, latest = tmp_path / "audit.db", latest_of(tmp_path, signer)
    assert await grow(db, latest, signer, range(10)) == 10
    assert await grow(db, latest, signer, range(10, 25)) == 25
    saved = latest.load()
    assert saved is not None
    assert saved.checkpoint.size == 25
    async with await AuditLog.open(db, latest=latest) as log:  # same size, same root
        assert (await log.checkpoint(signer)).size == 25


async def test_an_older_copy_of_the_database_is_refused(tmp_path: Path, signer: NoteSigner) -> None:
    db, latest = tmp_path / "audit.db", latest_of(tmp_path, signer)
    await grow(db, latest, signer, range(10))
    shutil.copy(db, tmp_path / "old.db")
    await grow(db, latest, signer, range(10, 30))
    shutil.copy(tmp_path / "old.db", db)
    with pytest.raises(ForkError) as caught:
        await AuditLog.open(db, latest=latest)
    message = str(caught.value)
    assert "10 entries" in message
    assert "30 entries" in message
    old = AuditStore.open(tmp_path / "old.db")
    try:
        assert old.root().hex() in message
    finally:
        old.close()
    # It may regrow past the checkpoint's size: still not an extension, still refused.
    store = AuditStore.open(db)
    store.append([decision(i) for i in range(100, 140)])
    store.close()
    with pytest.raises(ForkError, match="not an extension"):
        await AuditLog.open(db, latest=latest)


async def test_an_edited_history_of_the_same_size_is_refused(
    tmp_path: Path, signer: NoteSigner
) -> None:
    db, latest = tmp_path / "audit.db", latest_of(tmp_path, signer)
    await grow(db, latest, signer, range(20))
    forged = tmp_path / "forged.db"
    store = AuditStore.open(forged)
    store.append([decision(i, action="ignore" if i == 3 else "publish") for i in range(20)])
    store.close()
    shutil.copy(forged, db)
    with pytest.raises(ForkError, match="20 entries") as caught:
        await AuditLog.open(db, latest=latest)
    assert caught.value.args[0].count("root ") == 2


async def test_signing_is_refused_when_the_saved_checkpoint_is_not_extended(
    tmp_path: Path, signer: NoteSigner
) -> None:
    db, latest = tmp_path / "audit.db", latest_of(tmp_path, signer)
    async with await AuditLog.open(db, latest=latest) as log:
        await log.append([decision(i) for i in range(5)])
        await log.checkpoint(signer)
        # Another process signed a different tree of 8 entries with this key meanwhile.
        other = tmp_path / "other.db"
        store = AuditStore.open(other)
        store.append([decision(i) for i in range(50, 58)])
        latest.record(sign_checkpoint(signer, Checkpoint(signer.name, 8, store.root())))
        store.close()
        await log.append([decision(i) for i in range(5, 9)])
        with pytest.raises(ForkError, match="not an extension"):
            await log.checkpoint(signer)


async def test_a_crash_between_the_file_and_the_database_row_still_starts(
    tmp_path: Path, signer: NoteSigner
) -> None:
    """The file is written first: it may be ahead of the database's checkpoints table
    (killed before the row) or behind its tree (killed before the next checkpoint)."""
    db, latest = tmp_path / "audit.db", latest_of(tmp_path, signer)
    await grow(db, latest, signer, range(10))
    store = AuditStore.open(db)
    store.append([decision(i) for i in range(10, 16)])
    # The file holds a checkpoint of 16 the database's table never recorded.
    latest.record(sign_checkpoint(signer, Checkpoint(signer.name, 16, store.root())))
    store.append([decision(i) for i in range(16, 20)])  # and the tree grew past it
    assert store.latest_checkpoint() is not None
    assert store.latest_checkpoint()[0] == 10  # type: ignore[index]
    store.close()
    assert await grow(db, latest, signer, range(20, 21)) == 21


async def test_a_missing_file_adopts_the_databases_latest_checkpoint(
    tmp_path: Path, signer: NoteSigner
) -> None:
    db, latest = tmp_path / "audit.db", latest_of(tmp_path, signer)
    async with await AuditLog.open(db) as log:  # before this guard existed
        await log.append([decision(i) for i in range(7)])
        await log.checkpoint(signer)
    async with await AuditLog.open(db, latest=latest):
        pass
    saved = latest.load()
    assert saved is not None
    assert saved.checkpoint.size == 7


def test_a_note_by_another_key_is_refused(tmp_path: Path, signer: NoteSigner) -> None:
    latest = latest_of(tmp_path, signer)
    other = NoteSigner.generate(signer.name)
    latest.record(sign_checkpoint(other, Checkpoint(signer.name, 0, bytes(32))))
    with pytest.raises(FailedPrecondition, match="not a checkpoint signed by this service"):
        latest.load()
