"""Time-range exports an auditor can prove complete: the log's own monotonic
``logged_at``, the boundary entries around a range, and what a verifier refuses when
entries are dropped, truncated, hidden behind an edited query column or reordered."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from roost.audit.v1 import audit_service_pb2 as pb
from services.audit import records
from services.audit.bundle_format import ExportFilters, LoggedRange
from services.audit.checkpoint import NoteSigner
from services.audit.completeness import logged_at_us
from services.audit.store import AuditStore
from services.audit.tlog_proof import TlogProof
from services.kit.errors import InvalidArgument
from tests.support.audit_bundles import (
    HALL,
    KITCHEN,
    Lines,
    dump,
    edit,
    edit_proof,
    export,
    obj,
    rejects,
    sign,
    verify,
)
from tests.support.audit_records import T0_US, decision

SECOND = 1_000_000
# Five appends of six decisions each, logged at these wall-clock instants: the clock
# goes back before the fourth, which the log must stamp with the third's time.
CLOCK = [T0_US, T0_US + 10 * SECOND, T0_US + 20 * SECOND, T0_US + 5 * SECOND, T0_US + 40 * SECOND]
STAMPED = [
    T0_US,
    T0_US + 10 * SECOND,
    T0_US + 20 * SECOND,
    T0_US + 20 * SECOND,
    T0_US + 40 * SECOND,
]
PER_BATCH = 6
SIZE = PER_BATCH * len(CLOCK)


def _decision(i: int) -> pb.Decision:
    return decision(
        i,
        entity_id=KITCHEN if i % 3 == 0 else HALL,
        action="climate.set_temperature" if i % 4 == 0 else "publish",
    )


class _Clock:
    """A wall clock the test sets (microseconds since the epoch)."""

    def __init__(self) -> None:
        self.now_us = 0

    def __call__(self) -> int:
        return self.now_us


def _fill(db: Path) -> AuditStore:
    clock = _Clock()
    store = AuditStore.open(db, clock=clock)
    for b, now_us in enumerate(CLOCK):
        clock.now_us = now_us
        store.append([_decision(b * PER_BATCH + k) for k in range(PER_BATCH)])
    return store


@pytest.fixture(scope="module")
def ranged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuditStore]:
    """The five-append log above; tests must not write to it."""
    store = _fill(tmp_path_factory.mktemp("ranged") / "audit.db")
    yield store
    store.close()


def _range(
    store: AuditStore,
    signer: NoteSigner,
    start_us: int | None,
    end_us: int | None,
    filters: ExportFilters | None = None,
) -> Lines:
    return export(store, sign(store, signer), filters, logged=LoggedRange(start_us, end_us))


def _indexes(lines: Lines) -> list[int]:
    return [TlogProof.parse(obj(line)["proof"]).index for line in lines[1:-1]]


def _drop(lines: Lines, n: int, *, fix_trailer: bool = True) -> Lines:
    """``lines`` without line ``n`` (1-based), the trailer recounted if asked."""
    out = lines[: n - 1] + lines[n:]
    if fix_trailer:
        out[-1] = dump({"end": True, "entries": len(out) - 2})
    return out


# ---------------------------------------------------------------- logged_at


def test_every_record_carries_the_logs_monotonic_logged_at(ranged: AuditStore) -> None:
    got = [logged_at_us(ranged.get(_decision(i).decision_id).decision) for i in range(SIZE)]
    assert got == [STAMPED[i // PER_BATCH] for i in range(SIZE)]
    entry = ranged.get(_decision(20).decision_id)
    assert entry.record.endswith(records.logged_at_field(STAMPED[3]))
    assert entry.appended_at.ToMicroseconds() == CLOCK[3]  # the wall clock, unsigned


def test_logged_at_keeps_its_high_water_mark_across_a_restart(db: Path) -> None:
    store = _fill(db)
    store.close()
    clock = _Clock()
    clock.now_us = T0_US  # the clock is now 40 s behind the last stamp
    reopened = AuditStore.open(db, clock=clock)
    try:
        reopened.append([_decision(SIZE)])
        assert logged_at_us(reopened.get(_decision(SIZE).decision_id).decision) == STAMPED[-1]
    finally:
        reopened.close()


def test_a_client_cannot_choose_logged_at(store: AuditStore) -> None:
    d = _decision(0)
    d.logged_at.FromMicroseconds(T0_US)
    with pytest.raises(InvalidArgument, match=r"^decisions\[0\]\.logged_at: assigned by"):
        store.append([d])
    assert store.size() == 0


def test_logged_at_is_covered_by_the_leaf_hash(ranged: AuditStore, signer: NoteSigner) -> None:
    lines = _range(ranged, signer, T0_US + 10 * SECOND, T0_US + 30 * SECOND)
    proof = TlogProof.parse(obj(lines[1])["proof"])
    moved = pb.Decision.FromString(proof.extra)
    moved.logged_at.FromMicroseconds(T0_US + 15 * SECOND)
    forged = edit_proof(lines, 2, extra=moved.SerializeToString(deterministic=True))
    rejects(forged, signer, r"line 2 \(index 6\): inclusion proof does not lead")


def test_a_retry_keeps_the_first_logged_at(db: Path) -> None:
    store = _fill(db)
    try:
        results, _ = store.append([_decision(3)])
        assert results[0].already_logged
        assert results[0].index == 3
        assert results[0].leaf_hash == store.get(_decision(3).decision_id).leaf_hash
    finally:
        store.close()


# ---------------------------------------------------------------- range exports


def test_the_store_finds_a_range_by_binary_search(ranged: AuditStore) -> None:
    stamps = [STAMPED[i // PER_BATCH] for i in range(SIZE)]
    bounds = [None, 0, T0_US, T0_US + 1, T0_US + 20 * SECOND, T0_US + 40 * SECOND, 2 * T0_US]
    for start in bounds:
        for end in bounds:
            inside = [
                i
                for i, t in enumerate(stamps)
                if (start is None or t >= start) and (end is None or t < end)
            ]
            first, stop = ranged.logged_range(start, end, SIZE)
            assert list(range(first, stop)) == inside, (start, end)


def test_a_range_export_proves_its_boundaries(ranged: AuditStore, signer: NoteSigner) -> None:
    lines = _range(ranged, signer, T0_US + 10 * SECOND, T0_US + 30 * SECOND)
    header = obj(lines[0])
    assert header["complete"] is True
    assert header["range"]["start_us"] == T0_US + 10 * SECOND
    assert TlogProof.parse(header["range"]["before"]).index == 5
    assert TlogProof.parse(header["range"]["after"]).index == 24
    assert _indexes(lines) == list(range(6, 24))
    report = verify(lines, signer)
    assert report.complete
    assert not report.covers_log
    assert report.logged == LoggedRange(T0_US + 10 * SECOND, T0_US + 30 * SECOND)
    assert (report.entries, report.first_index, report.last_index) == (18, 6, 23)


def test_a_range_that_covers_everything_is_the_whole_log(
    ranged: AuditStore, signer: NoteSigner
) -> None:
    for start, end in [(None, None), (0, 2 * T0_US), (T0_US, None)]:
        lines = _range(ranged, signer, start, end)
        assert obj(lines[0])["range"]["before"] is None
        assert obj(lines[0])["range"]["after"] is None
        report = verify(lines, signer)
        assert report.complete
        assert report.covers_log
        assert report.entries == SIZE


@pytest.mark.parametrize(
    ("start", "end", "before", "after"),
    [
        (T0_US + 11 * SECOND, T0_US + 12 * SECOND, 11, 12),  # between two appends
        (0, T0_US, None, 0),  # before the first entry
        (T0_US + 41 * SECOND, None, SIZE - 1, None),  # after the last
    ],
)
def test_an_empty_range_is_proven_empty(
    ranged: AuditStore,
    signer: NoteSigner,
    start: int,
    end: int | None,
    before: int | None,
    after: int | None,
) -> None:
    lines = _range(ranged, signer, start, end)
    bounds = obj(lines[0])["range"]
    for name, want in (("before", before), ("after", after)):
        got = bounds[name] and TlogProof.parse(bounds[name]).index
        assert got == want
    report = verify(lines, signer)
    assert report.complete
    assert report.entries == 0


def test_a_dropped_entry_line_is_named_as_a_gap(ranged: AuditStore, signer: NoteSigner) -> None:
    lines = _range(ranged, signer, T0_US + 10 * SECOND, T0_US + 30 * SECOND)
    rejects(
        _drop(lines, 5),  # index 9
        signer,
        r"line 5 \(index 10\): entries 9\.\.9 of the range are missing",
    )
    # The first entry of the range too: the before boundary proves it was there.
    rejects(_drop(lines, 2), signer, r"line 2 \(index 7\): entries 6\.\.6 of the range")


def test_a_truncated_end_is_caught(ranged: AuditStore, signer: NoteSigner) -> None:
    lines = _range(ranged, signer, T0_US + 10 * SECOND, T0_US + 30 * SECOND)
    cut = _drop(_drop(lines, len(lines) - 1), len(lines) - 2)
    rejects(cut, signer, r"entries 22\.\.23 of the range are missing before the boundary entry 24")
    to_the_end = _range(ranged, signer, T0_US + 10 * SECOND, None)
    rejects(
        _drop(to_the_end, len(to_the_end) - 1),
        signer,
        rf"entries {SIZE - 1}\.\.{SIZE - 1} of the range are missing before the end of the tree",
    )
    # Without recounting the trailer the count gives it away first.
    rejects(_drop(lines, 3, fix_trailer=False), signer, "entries 7..7 of the range are missing")


def test_forged_boundaries_are_refused(ranged: AuditStore, signer: NoteSigner) -> None:
    lines = _range(ranged, signer, T0_US + 10 * SECOND, T0_US + 30 * SECOND)
    entries = [obj(line)["proof"] for line in lines[1:-1]]

    def set_bound(name: str, value: str | None) -> Lines:
        return edit(lines, 1, lambda h: h["range"].__setitem__(name, value))

    # Claiming the range starts the tree: then indexes 0..5 are missing.
    rejects(set_bound("before", None), signer, r"entries 0\.\.5 of the range are missing")
    # Claiming it reaches the end of the tree: then 24..29 are missing.
    rejects(set_bound("after", None), signer, r"entries 24\.\.29 of the range are missing")
    # A boundary inside the range (to hide the entries before it).
    rejects(
        set_bound("before", entries[3]), signer, r"range.before \(index 9\) is not logged before"
    )
    rejects(
        set_bound("after", entries[-3]), signer, r"range.after \(index 21\) is not logged at or"
    )
    # A boundary whose record was edited.
    proof = TlogProof.parse(obj(lines[0])["range"]["after"])
    rec = pb.Decision.FromString(proof.extra)
    rec.logged_at.FromMicroseconds(T0_US + 50 * SECOND)
    forged = TlogProof(proof.index, proof.hashes, proof.checkpoint, rec.SerializeToString())
    rejects(set_bound("after", forged.marshal()), signer, r"range.after \(index 24\): inclusion")
    # Moving the range's bounds so the missing entries fall outside: the boundaries disagree.
    moved = edit(lines, 1, lambda h: h["range"].__setitem__("start_us", T0_US + 20 * SECOND))
    rejects(moved, signer, r"line 2 \(index 6\): logged_at is outside the bundle's range")


def test_a_log_whose_logged_at_goes_back_cannot_prove_a_range(db: Path, signer: NoteSigner) -> None:
    """A hub that stamps an older logged_at (to hide an entry from the month it was in)
    is caught by the first range export that crosses it."""
    clock = _Clock()
    store = AuditStore.open(db, clock=clock)
    try:
        for b, now_us in enumerate([T0_US, T0_US + 20 * SECOND, T0_US + 30 * SECOND]):
            clock.now_us = now_us
            if b == 2:
                store._logged_hwm_us = 0  # the forger's log ignores its high-water mark
                clock.now_us = T0_US + 10 * SECOND
            store.append([_decision(b * 2 + k) for k in range(2)])
        lines = _range(store, signer, T0_US + 15 * SECOND, None)
        rejects(lines, signer, r"index 4\): logged_at is (outside|earlier)")
    finally:
        store.close()


# ---------------------------------------------------------------- filters


def test_server_side_filters_prove_membership_only(ranged: AuditStore, signer: NoteSigner) -> None:
    lines = _range(
        ranged, signer, T0_US + 10 * SECOND, T0_US + 30 * SECOND, ExportFilters(entity_id=KITCHEN)
    )
    header = obj(lines[0])
    assert header["complete"] is False
    assert _indexes(lines) == [i for i in range(6, 24) if i % 3 == 0]
    report = verify(lines, signer)
    assert not report.complete
    assert report.entries == 6
    # Dropping a line is NOT detected by a membership-only bundle: hence client-side filters.
    verify(_drop(lines, 3), signer)


def test_client_side_filters_pick_from_what_was_verified(
    ranged: AuditStore, signer: NoteSigner
) -> None:
    lines = _range(ranged, signer, T0_US + 10 * SECOND, T0_US + 30 * SECOND)
    cases = [
        (ExportFilters(entity_id=KITCHEN), [i for i in range(6, 24) if i % 3 == 0]),
        (ExportFilters(action="publish"), [i for i in range(6, 24) if i % 4]),
        (
            ExportFilters(entity_id=HALL, action="publish"),
            [i for i in range(6, 24) if i % 3 and i % 4],
        ),
        (ExportFilters(model_name="occupancy", model_version="1.0.0"), list(range(6, 24))),
        (ExportFilters(model_name="other"), []),
    ]
    for select, want in cases:
        seen: list[int] = []
        report = verify(lines, signer, select=select, on_match=lambda i, _d, s=seen: s.append(i))
        assert seen == want, select
        assert report.matched == len(want)


def test_an_edited_entity_column_cannot_hide_an_entry(db: Path, signer: NoteSigner) -> None:
    """The hub owner edits the unsigned ``entity_id`` query column of entry 9: a
    server-side filtered export omits it, but the complete range verified and filtered
    by the auditor still shows it."""
    store = _fill(db)
    try:
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute("DROP TRIGGER entries_no_update")
        conn.execute("UPDATE entries SET entity_id = 'light.elsewhere' WHERE idx = 9")
        conn.close()
        window = (T0_US + 10 * SECOND, T0_US + 30 * SECOND)
        served = _range(store, signer, *window, ExportFilters(entity_id=KITCHEN))
        assert 9 not in _indexes(served)
        assert not verify(served, signer).complete  # says it proves membership only
        complete = _range(store, signer, *window)
        seen: list[int] = []
        verify(
            complete,
            signer,
            select=ExportFilters(entity_id=KITCHEN),
            on_match=lambda i, _d: seen.append(i),
        )
        assert seen == [6, 9, 12, 15, 18, 21]
    finally:
        store.close()


def test_entries_from_before_logged_at_still_verify(
    db: Path, signer: NoteSigner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records written before the log stamped logged_at (schema v4) have none: they
    keep verifying and count as logged before every stamped one."""
    legacy = [_decision(i) for i in range(3)]
    store = AuditStore.open(db)
    with monkeypatch.context() as patch:
        # The v4 writer: no logged_at in the record; the v5 column's default is 0.
        patch.setattr(records, "logged_at_field", lambda _us: b"")
        store.append(legacy)
    store.close()
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("DROP TRIGGER entries_no_update")
    conn.execute("UPDATE entries SET logged_at_us = 0")
    conn.close()
    clock = _Clock()
    clock.now_us = T0_US
    store = AuditStore.open(db, clock=clock)
    try:
        store.append([_decision(i) for i in range(3, 6)])
        assert not store.get(legacy[0].decision_id).decision.HasField("logged_at")
        whole = export(store, sign(store, signer))
        assert verify(whole, signer).covers_log
        recent = _range(store, signer, T0_US, None)
        assert TlogProof.parse(obj(recent[0])["range"]["before"]).index == 2
        assert verify(recent, signer).entries == 3
        older = _range(store, signer, None, T0_US)
        assert _indexes(older) == [0, 1, 2]
        assert verify(older, signer).complete
    finally:
        store.close()


def test_a_bundle_without_range_keeps_verifying(lines: Lines, signer: NoteSigner) -> None:
    header = obj(lines[0])
    assert "range" not in header
    assert verify(lines, signer).covers_log


def test_a_malformed_range_is_refused(ranged: AuditStore, signer: NoteSigner) -> None:
    lines = _range(ranged, signer, T0_US + 10 * SECOND, T0_US + 30 * SECOND)
    for bad, message in [
        ([], "range must be an object"),
        ({"before": None}, "range must be an object"),
        ({"before": None, "after": None, "start_us": "x"}, "range.start_us must be an integer"),
        ({"before": None, "after": None, "start_us": 5, "end_us": 4}, "end_us is before"),
        ({"before": "junk", "after": None}, "range.before: malformed tlog-proof"),
    ]:
        rejects(edit(lines, 1, lambda h, b=bad: h.__setitem__("range", b)), signer, message)
    assert json.loads(lines[0])["range"]["end_us"] == T0_US + 30 * SECOND


def test_a_reversed_range_is_refused_before_any_work(
    ranged: AuditStore, signer: NoteSigner
) -> None:
    with pytest.raises(InvalidArgument, match=r"^logged_until: must not be before logged_from$"):
        _range(ranged, signer, T0_US + 2, T0_US + 1)
