"""Reading the log: time ranges, filters, both directions, and filter-bound page tokens."""

from __future__ import annotations

import base64
import json

import pytest

from roost.audit.v1 import audit_service_pb2 as pb
from services.audit import salting
from services.audit.store import AuditStore
from services.kit.errors import InvalidArgument
from tests.support.audit_records import T0_US, decision


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
    expected.inputs.salt = entries[5].decision.inputs.salt
    expected.inputs_digest = salting.stored_digest(
        entries[5].decision.inputs.SerializeToString(deterministic=True)
    )
    expected.logged_at.CopyFrom(entries[5].decision.logged_at)
    assert entries[5].decision == expected


def test_query_rejects_bad_tokens_and_page_sizes(store: AuditStore) -> None:
    store.append([decision(i) for i in range(5)])
    _, token = store.query(None, None, page_size=2)
    assert token
    with pytest.raises(InvalidArgument, match="page_token: invalid"):
        store.query(None, None, page_token="not-a-token!")
    with pytest.raises(InvalidArgument, match="page_token: invalid"):
        store.query(None, None, page_token="eyJ2IjoxfQ")  # {"v":1}
    with pytest.raises(InvalidArgument, match="page_token: does not match the query's filters"):
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
    cursor = data["c"]
    for bad in ({"index": 2**70}, {"index": -1}, {"index": "1"}, {"index": None}, {"last": 1.5}):
        forged_data = {**data, "c": {**cursor, **bad}}
        forged = base64.urlsafe_b64encode(json.dumps(forged_data).encode()).decode()
        with pytest.raises(InvalidArgument, match="page_token: invalid"):
            store.query(None, None, page_size=1, page_token=forged)
    with pytest.raises(InvalidArgument, match="page_token: invalid"):
        store.query(None, None, page_token="A" * 1000)


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
