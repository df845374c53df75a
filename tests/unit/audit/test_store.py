"""Audit log storage: append/get/query, idempotency, durability, group commit."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import sqlite3
from pathlib import Path

import pytest

from roost.audit.v1 import audit_service_pb2 as pb
from services.audit import records
from services.audit.log import AuditLog
from services.audit.store import AuditStore
from services.kit.errors import InvalidArgument, NotFound
from tests.support.audit_records import T0_US, decision


@pytest.fixture
def store(tmp_path: Path):
    s = AuditStore.open(tmp_path / "audit" / "audit.db")
    yield s
    s.close()


def test_leaf_hash_is_rfc9162_over_record_without_inputs() -> None:
    d = decision(1)
    rec = records.record_bytes(d)
    stripped = pb.Decision.FromString(rec)
    assert not stripped.HasField("inputs")
    assert records.leaf_hash(rec) == hashlib.sha256(b"\x00" + rec).digest()
    assert (
        records.inputs_digest(d.inputs)
        == hashlib.sha256(d.inputs.SerializeToString(deterministic=True)).hexdigest()
    )


def test_validate_decision_names_the_field() -> None:
    records.validate_decision(decision(0), "decisions[0]")
    bad = decision(3)
    bad.ClearField("decision_id")
    with pytest.raises(InvalidArgument, match=r"^decisions\[3\]\.decision_id: required$"):
        records.validate_decision(bad, "decisions[3]")
    bad = decision(0)
    bad.ClearField("decided_at")
    with pytest.raises(InvalidArgument, match=r"^decided_at: required$"):
        records.validate_decision(bad, "")


def test_append_get_roundtrip(store: AuditStore) -> None:
    d = decision(0)
    results, size = store.append([d])
    assert size == 1 == store.size()
    assert results[0].index == 0
    assert not results[0].already_logged
    assert not d.inputs_digest  # the caller's message is not modified

    entry = store.get(d.decision_id)
    assert entry.index == 0
    assert entry.leaf_hash == results[0].leaf_hash
    assert entry.leaf_hash == hashlib.sha256(b"\x00" + entry.record).digest()
    # The store filled in the digest, which is part of the leaf; inputs are not.
    logged = pb.Decision.FromString(entry.record)
    assert logged.inputs_digest == records.inputs_digest(d.inputs)
    assert not logged.HasField("inputs")
    assert entry.decision.inputs == d.inputs
    assert entry.decision.decision_id == d.decision_id
    assert not entry.inputs_redacted
    assert entry.appended_at.seconds > 0


def test_decision_without_inputs(store: AuditStore) -> None:
    d = decision(0, with_inputs=False)
    store.append([d])
    entry = store.get(d.decision_id)
    assert not entry.decision.HasField("inputs")
    assert entry.record == records.record_bytes(d) == d.SerializeToString(deterministic=True)


def test_get_unknown_is_not_found(store: AuditStore) -> None:
    with pytest.raises(NotFound, match="decision_id"):
        store.get("nope")


def test_idempotent_retry(store: AuditStore) -> None:
    first, _ = store.append([decision(i) for i in range(3)])
    again, size = store.append([decision(i) for i in range(3)])
    assert size == 3 == store.size()
    assert [r.index for r in again] == [r.index for r in first] == [0, 1, 2]
    assert [r.leaf_hash for r in again] == [r.leaf_hash for r in first]
    assert all(r.already_logged for r in again)

    mixed, size = store.append([decision(1), decision(3)])
    assert size == 4
    assert [(r.index, r.already_logged) for r in mixed] == [(1, True), (3, False)]


def test_duplicate_id_in_one_batch(store: AuditStore) -> None:
    results, size = store.append([decision(7), decision(8), decision(7)])
    assert size == 2
    assert [(r.index, r.already_logged) for r in results] == [(0, False), (1, False), (0, True)]
    assert results[2].leaf_hash == results[0].leaf_hash


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d.ClearField("decision_id"), "decisions[1].decision_id: required"),
        (lambda d: setattr(d, "decision_id", "x" * 129), "decisions[1].decision_id"),
        (lambda d: d.ClearField("decided_at"), "decisions[1].decided_at: required"),
        (lambda d: d.ClearField("entity_id"), "decisions[1].entity_id: required"),
        (lambda d: d.model.ClearField("name"), "decisions[1].model.name: required"),
        (lambda d: d.model.ClearField("version"), "decisions[1].model.version: required"),
        (lambda d: d.model.ClearField("sha256"), "decisions[1].model.sha256: required"),
        (lambda d: setattr(d, "actor", pb.ACTOR_UNSPECIFIED), "decisions[1].actor"),
        (lambda d: setattr(d, "inputs_digest", "0" * 64), "decisions[1].inputs_digest"),
    ],
)
def test_invalid_decision_names_field_and_writes_nothing(
    store: AuditStore, mutate, field: str
) -> None:
    bad = decision(1)
    mutate(bad)
    with pytest.raises(InvalidArgument) as info:
        store.append([decision(0), bad, decision(2)])
    assert str(info.value).startswith(field)
    assert "612" not in str(info.value)  # never echo household values
    assert store.size() == 0


def test_correct_inputs_digest_is_accepted(store: AuditStore) -> None:
    d = decision(0)
    d.inputs_digest = records.inputs_digest(d.inputs)
    results, _ = store.append([d])
    assert store.get(d.decision_id).record == records.record_bytes(d)
    assert results[0].leaf_hash == records.leaf_hash(records.record_bytes(d))


def _all_pages(store: AuditStore, page_size: int, **kwargs) -> list[int]:
    indexes: list[int] = []
    token = ""
    while True:
        entries, token = store.query(page_size=page_size, page_token=token, **kwargs)
        assert len(entries) <= page_size
        indexes += [e.index for e in entries]
        if not token:
            return indexes


def test_query_time_range_filters_and_pagination(store: AuditStore) -> None:
    batch = [
        decision(
            i,
            entity_id=f"light.room_{i % 3}",
            model=("occupancy", "1.0.0" if i % 2 else "1.1.0"),
            action="publish" if i % 5 else "climate.set_temperature",
        )
        for i in range(60)
    ]
    store.append(batch)
    sec = 1_000_000

    # Time range: start inclusive, end exclusive; oldest first; pages without gaps/dupes.
    got = _all_pages(store, 7, start_us=T0_US + 10 * sec, end_us=T0_US + 40 * sec)
    assert got == list(range(10, 40))
    assert _all_pages(store, 1000, start_us=None, end_us=None) == list(range(60))
    assert _all_pages(store, 60, start_us=None, end_us=None) == list(range(60))

    got = _all_pages(store, 4, start_us=None, end_us=None, entity_id="light.room_1")
    assert got == [i for i in range(60) if i % 3 == 1]
    got = _all_pages(
        store, 3, start_us=T0_US, end_us=None, model_name="occupancy", model_version="1.0.0"
    )
    assert got == [i for i in range(60) if i % 2]
    got = _all_pages(store, 5, start_us=None, end_us=None, action="climate.set_temperature")
    assert got == list(range(0, 60, 5))
    assert store.query(None, None, entity_id="light.nowhere") == ([], "")

    # Default page size is 100; entries carry full decisions.
    entries, token = store.query(None, None)
    assert len(entries) == 60
    assert token == ""
    expected = pb.Decision()
    expected.CopyFrom(batch[5])
    expected.inputs_digest = records.inputs_digest(batch[5].inputs)
    assert entries[5].decision == expected


def test_query_rejects_bad_tokens_and_page_sizes(store: AuditStore) -> None:
    store.append([decision(i) for i in range(5)])
    _, token = store.query(None, None, page_size=2)
    assert token
    with pytest.raises(InvalidArgument, match="page_token: invalid"):
        store.query(None, None, page_token="not-a-token!")
    with pytest.raises(InvalidArgument, match="page_token: invalid"):
        store.query(None, None, page_token="eyJ2IjoxfQ")  # {"v":1}
    with pytest.raises(InvalidArgument, match="page_token"):
        store.query(None, None, entity_id="light.other", page_token=token)
    with pytest.raises(InvalidArgument, match="page_size"):
        store.query(None, None, page_size=1001)
    with pytest.raises(InvalidArgument, match="page_size"):
        store.query(None, None, page_size=-1)
    # The same filters with another page size continue fine.
    entries, _ = store.query(None, None, page_size=10, page_token=token)
    assert [e.index for e in entries] == [2, 3, 4]


def test_time_bounded_pagination_is_a_snapshot(store: AuditStore) -> None:
    store.append([decision(i) for i in range(10)])
    entries, token = store.query(T0_US, None, page_size=4)
    store.append([decision(i) for i in range(10, 15)])  # also inside the range
    indexes = [e.index for e in entries]
    while token:
        entries, token = store.query(T0_US, None, page_size=4, page_token=token)
        indexes += [e.index for e in entries]
    assert indexes == list(range(10))
    # A new query sees everything.
    assert [e.index for e in store.query(T0_US, None)[0]] == list(range(15))


def test_forged_token_values_are_invalid(store: AuditStore) -> None:
    store.append([decision(i) for i in range(3)])
    _, token = store.query(None, None, page_size=1)
    data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    for bad in ({"a": 2**70}, {"a": -1}, {"a": "1"}, {"l": 1.5}):
        forged = base64.urlsafe_b64encode(json.dumps({**data, **bad}).encode()).decode()
        with pytest.raises(InvalidArgument, match="page_token: invalid"):
            store.query(None, None, page_size=1, page_token=forged)
    with pytest.raises(InvalidArgument, match="page_token: invalid"):
        store.query(None, None, page_token="A" * 1000)


def test_durable_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    s = AuditStore.open(path)
    results, _ = s.append([decision(i) for i in range(10)])
    s.close()

    s = AuditStore.open(path)
    try:
        assert s.size() == 10
        assert s.get(decision(4).decision_id).leaf_hash == results[4].leaf_hash
        more, size = s.append([decision(10)])
        assert (more[0].index, size) == (10, 11)
    finally:
        s.close()


def test_entries_are_append_only(store: AuditStore) -> None:
    store.append([decision(0)])
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        store._conn.execute("DELETE FROM entries")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        store._conn.execute("UPDATE entries SET action = 'x'")


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


async def test_group_commit_merges_requests_arriving_during_a_commit(tmp_path: Path) -> None:
    async with await AuditLog.open(tmp_path / "audit.db") as log:
        first = asyncio.create_task(log.append([decision(0)]))
        await asyncio.sleep(0)  # the first commit is now in flight
        rest = [asyncio.create_task(log.append([decision(i)])) for i in range(1, 30)]
        await asyncio.gather(first, *rest)
        assert log.commits <= 3
        assert await log.size() == 30


def test_query_newest_first_pages_backwards(store: AuditStore) -> None:
    store.append([decision(i, entity_id=f"e{i % 2}") for i in range(7)])
    page, token = store.query(None, None, entity_id="e0", page_size=2, newest_first=True)
    assert [e.index for e in page] == [6, 4]
    page, token = store.query(
        None, None, entity_id="e0", page_size=2, page_token=token, newest_first=True
    )
    assert [e.index for e in page] == [2, 0]
    assert token == ""
    # A token of one direction is not valid for the other.
    _, token = store.query(None, None, page_size=1, newest_first=True)
    with pytest.raises(InvalidArgument, match="filters"):
        store.query(None, None, page_size=1, page_token=token)


def test_consuming_prepare_gives_the_same_records() -> None:
    kept = [decision(i) for i in range(3)] + [decision(9, with_inputs=False)]
    consumed = [pb.Decision.FromString(d.SerializeToString()) for d in kept]
    assert records.prepare(consumed, consume=True) == records.prepare(kept)
    assert all(d.HasField("inputs") for d in kept[:3])  # not consumed: untouched
    assert not any(d.HasField("inputs") for d in consumed)
