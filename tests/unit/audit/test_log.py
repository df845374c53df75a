"""The asyncio audit log: group commit of concurrent appends."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from services.audit import records
from services.audit.log import AuditLog
from services.audit.store import AuditStore
from services.kit.errors import InvalidArgument, NotFound
from tests.support.audit_records import decision


async def test_group_commit(tmp_path: Path) -> None:
    async with await AuditLog.open(tmp_path / "audit.db") as log:
        await log.append([decision(1000)])  # one commit before the burst
        before = log.commits

        async def one(i: int):
            d = decision(i)
            if i == 17:
                d.ClearField("entity_id")
            return await log.append([d, decision(i + 100)])

        outcomes = await asyncio.gather(*(one(i) for i in range(50)), return_exceptions=True)

        failed = [o for o in outcomes if isinstance(o, BaseException)]
        assert len(failed) == 1
        assert isinstance(outcomes[17], InvalidArgument)
        assert "decisions[0].entity_id: required" in str(outcomes[17])

        indexes = []
        for i, outcome in enumerate(outcomes):
            if i == 17:
                continue
            assert not isinstance(outcome, BaseException)
            results, tree_size = outcome
            assert [r.decision_id for r in results] == [
                decision(i).decision_id,
                decision(i + 100).decision_id,
            ]
            assert not any(r.already_logged for r in results)
            assert tree_size >= max(r.index for r in results) + 1
            indexes += [r.index for r in results]
        assert sorted(indexes) == list(range(1, 1 + 49 * 2))
        assert log.commits - before < 50
        assert await log.size() == 1 + 49 * 2

        # Reads see committed appends; retries through the log are idempotent.
        entry = await log.get(decision(3).decision_id)
        assert entry.decision.decision_id == decision(3).decision_id
        results, size = await log.append([decision(3)])
        assert results[0].already_logged
        assert results[0].index == entry.index
        assert size == 99
        page, token = await log.query(None, None, page_size=10)
        assert [e.index for e in page] == list(range(10))
        assert token
        with pytest.raises(NotFound):
            await log.get("unknown")

    # Closed: the data is durable.
    s = AuditStore.open(tmp_path / "audit.db")
    try:
        assert s.size() == 99
    finally:
        s.close()


async def test_group_commit_merges_requests_arriving_during_a_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with await AuditLog.open(tmp_path / "audit.db") as log:
        # Hold the first commit on the writer thread until the other requests are queued.
        started, release = threading.Event(), threading.Event()
        commit = log._commit_group

        def held_commit(batches: list[list[records.PreparedRecord]]):
            started.set()
            assert release.wait(timeout=30), "the test never released the first commit"
            return commit(batches)

        monkeypatch.setattr(log, "_commit_group", held_commit)
        first = asyncio.create_task(log.append([decision(0)]))
        assert await asyncio.to_thread(started.wait, 30)  # the first commit is in flight
        rest = [asyncio.create_task(log.append([decision(i)])) for i in range(1, 30)]
        # Callbacks run in the order they were scheduled: the 29 tasks queue their
        # requests (their first step) before this one lets the first commit finish.
        asyncio.get_running_loop().call_soon(release.set)
        await asyncio.gather(first, *rest)
        assert log.commits == 2
        assert await log.size() == 30


async def test_a_large_invalid_request_fails_alone_in_its_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests over the inline limit are prepared on the writer thread, inside their
    group: a bad one there gets InvalidArgument naming its field, and the requests
    committed with it in the same transaction are unaffected."""
    async with await AuditLog.open(tmp_path / "audit.db") as log:
        started, release = threading.Event(), threading.Event()
        commit = log._commit_group

        def held_commit(group):  # type: ignore[no-untyped-def]
            started.set()
            assert release.wait(timeout=30), "the test never released the first commit"
            return commit(group)

        monkeypatch.setattr(log, "_commit_group", held_commit)
        first = asyncio.create_task(log.append([decision(0)]))
        assert await asyncio.to_thread(started.wait, 30)

        def batch(start: int) -> list:  # type: ignore[type-arg]
            return [decision(i) for i in range(start, start + 40)]

        bad = batch(200)
        bad[33].ClearField("entity_id")
        good = [asyncio.create_task(log.append(batch(s), consume=True)) for s in (100, 300)]
        invalid = asyncio.create_task(log.append(bad, consume=True))
        asyncio.get_running_loop().call_soon(release.set)
        outcomes = await asyncio.gather(first, *good, invalid, return_exceptions=True)

        assert isinstance(outcomes[3], InvalidArgument)
        assert "decisions[33].entity_id: required" in str(outcomes[3])
        assert log.commits == 2  # the two good ones together, in the second group
        for outcome, start in zip(outcomes[1:3], (100, 300), strict=True):
            assert not isinstance(outcome, BaseException)
            results, tree_size = outcome
            assert [r.decision_id for r in results] == [d.decision_id for d in batch(start)]
            assert tree_size == 81
        assert await log.size() == 81
        with pytest.raises(NotFound):
            await log.get(decision(200).decision_id)  # nothing of the bad request
