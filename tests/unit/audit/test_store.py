"""Audit log storage: append/get, idempotency, validation, durability, append-only rows."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from roost.audit.v1 import audit_service_pb2 as pb
from services.audit import records, salting
from services.audit.compact_range import root_from_leaves
from services.audit.completeness import logged_at_us
from services.audit.inserts import statement_sizes
from services.audit.merkle import leaf_hash
from services.audit.store import AuditStore
from services.kit.errors import InvalidArgument, NotFound
from tests.support.audit_records import decision


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
    stored = entry.decision.inputs
    assert logged.inputs_digest == salting.stored_digest(stored.SerializeToString())
    assert not logged.HasField("inputs")
    assert len(stored.salt) == 32
    stored.ClearField("salt")
    assert stored == d.inputs
    assert entry.decision.decision_id == d.decision_id
    assert not entry.inputs_redacted
    assert entry.appended_at.seconds > 0


def test_decision_without_inputs(store: AuditStore) -> None:
    d = decision(0, with_inputs=False)
    store.append([d])
    entry = store.get(d.decision_id)
    assert not entry.decision.HasField("inputs")
    logged = records.with_logged_at(records.record_bytes(d), logged_at_us(entry.decision))
    d.logged_at.CopyFrom(entry.decision.logged_at)
    assert entry.record == logged == d.SerializeToString(deterministic=True)


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


def test_a_callers_digest_of_sent_inputs_is_refused(store: AuditStore) -> None:
    # Only the service's salted digest commits to inputs: a caller's own (plain, so
    # brute-forceable once the inputs are erased) is refused, and so is a caller's salt.
    d = decision(0)
    d.inputs_digest = hashlib.sha256(d.inputs.SerializeToString(deterministic=True)).hexdigest()
    with pytest.raises(InvalidArgument, match=r"^decisions\[0\]\.inputs_digest: must be empty"):
        store.append([d])
    d = decision(0)
    d.inputs.salt = b"\x00" * 32
    with pytest.raises(InvalidArgument, match=r"^decisions\[0\]\.inputs\.salt: must be empty"):
        store.append([d])
    assert store.size() == 0
    # Without inputs, a digest of inputs kept elsewhere is the caller's to give.
    d = decision(0, with_inputs=False)
    d.inputs_digest = "ab" * 32
    results, _ = store.append([d])
    entry = store.get(d.decision_id)
    logged = records.with_logged_at(records.record_bytes(d), logged_at_us(entry.decision))
    assert entry.record == logged
    assert results[0].leaf_hash == leaf_hash(logged)


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


@pytest.mark.parametrize("largest", [1, 7, 200])
def test_statement_sizes_cover_any_count_from_a_small_fixed_set(largest: int) -> None:
    seen: set[int] = set()
    for count in range(1_000):
        sizes = statement_sizes(count, largest)
        assert sum(sizes) == count
        assert all(0 < size <= largest for size in sizes)
        seen.update(sizes)
    # The largest, then powers of two below it: what the statement cache holds per table.
    assert seen <= {largest} | {1 << k for k in range(largest.bit_length())}


def test_batches_of_every_size_store_every_row_in_order(store: AuditStore) -> None:
    """Batches cut into statements of several sizes (full ones, then powers of two)
    still write each entry, input and tree node once, in leaf order."""
    sizes = [1, 2, 3, 199, 200, 201, 413, 16, 31]
    start, leaves = 0, []
    for size in sizes:
        results, tree_size = store.append([decision(i) for i in range(start, start + size)])
        assert [r.index for r in results] == list(range(start, start + size))
        leaves += [r.leaf_hash for r in results]
        start += size
        assert tree_size == start
    assert store.root() == root_from_leaves(leaves)
    for index in (0, 5, 400, 600, start - 1):
        entry = store.get(decision(index).decision_id)
        assert (entry.index, entry.leaf_hash) == (index, leaves[index])
        assert entry.decision.inputs.feature_names == decision(index).inputs.feature_names
