"""Export bundles (roost.audit.bundle/v1) written from a real store: header, entries,
proofs, filters, consistency proofs, omitted and redacted inputs; each one verifies."""

from __future__ import annotations

import base64
import hashlib
import sqlite3
from pathlib import Path

import pytest

from services.audit.bundle_format import FORMAT, ExportFilters
from services.audit.checkpoint import Checkpoint, NoteSigner, sign_checkpoint
from services.audit.export import iter_bundle
from services.audit.merkle import EMPTY_ROOT
from services.audit.store import AuditStore
from services.audit.tlog_proof import TlogProof
from services.audit.verify import BundleReport, iter_decisions
from services.kit.errors import FailedPrecondition, InvalidArgument
from tests.support.audit_bundles import (
    HALL,
    KITCHEN,
    ORIGIN,
    N,
    export,
    logged,
    new_store,
    obj,
    sign,
    verify,
)
from tests.support.audit_records import T0_US


def test_whole_log_round_trip(shared_store: AuditStore, signer: NoteSigner) -> None:
    note = sign(shared_store, signer)
    lines = export(shared_store, note)
    assert len(lines) == N + 2

    header = obj(lines[0])
    assert header["format"] == FORMAT == "roost.audit.bundle/v1"
    assert header["origin"] == ORIGIN
    assert header["tree_size"] == N
    assert base64.b64decode(header["root_hash"]) == shared_store.root()
    assert header["checkpoint"] == note
    assert header["complete"] is True
    assert header["filters"] == {}
    assert header["consistency"] == []
    assert header["inputs"] == "included"
    assert header["exported_at"].endswith("Z")
    assert obj(lines[-1]) == {"end": True, "entries": N}

    for i, line in enumerate(lines[1:-1]):
        entry = obj(line)
        assert set(entry) == {"proof", "inputs", "inputs_redacted"}
        proof = TlogProof.parse(entry["proof"])
        stored = shared_store.get(logged(i).decision_id)
        assert proof.index == i
        assert proof.extra == stored.record
        assert proof.checkpoint == note
        assert list(proof.hashes) == shared_store.inclusion_proof(i, N)
        assert entry["inputs_redacted"] is False
        if i % 5 == 4:
            assert entry["inputs"] is None
        else:
            assert base64.b64decode(entry["inputs"]) == stored.decision.inputs.SerializeToString(
                deterministic=True
            )

    seen: list[int] = []
    report = verify(lines, signer, on_entry=lambda: seen.append(1))
    assert report == BundleReport(
        origin=ORIGIN,
        tree_size=N,
        root_hash=shared_store.root(),
        entries=N,
        redacted=0,
        complete=True,
        consistency_checked=(),
        first_index=0,
        last_index=N - 1,
        covers_log=True,
    )
    assert len(seen) == N


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7, 8, 9, 13, 16, 17, 20])
def test_proofs_at_every_tree_size(shared_store: AuditStore, signer: NoteSigner, size: int) -> None:
    """An export at an older checkpoint pins its tree size (newer entries are left out)."""
    lines = export(shared_store, sign(shared_store, signer, size), page_size=3)
    assert len(lines) == size + 2
    for i, line in enumerate(lines[1:-1]):
        proof = TlogProof.parse(obj(line)["proof"])
        assert proof.index == i
        assert list(proof.hashes) == shared_store.inclusion_proof(i, size)
    report = verify(lines, signer)
    assert (report.tree_size, report.entries, report.complete) == (size, size, True)


def test_empty_log(db: Path, signer: NoteSigner) -> None:
    store = AuditStore.open(db)
    note = sign_checkpoint(signer, Checkpoint(ORIGIN, 0, EMPTY_ROOT))
    lines = export(store, note)
    assert len(lines) == 2
    report = verify(lines, signer)
    assert (report.entries, report.complete, report.first_index, report.last_index) == (
        0,
        True,
        None,
        None,
    )
    store.close()


def test_chunks_are_whole_lines_one_page_each(shared_store: AuditStore, signer: NoteSigner) -> None:
    chunks = list(
        iter_bundle(
            shared_store,
            note=sign(shared_store, signer),
            origin=ORIGIN,
            filters=ExportFilters(),
            page_size=7,
        )
    )
    assert [chunk.count(b"\n") for chunk in chunks] == [1, 7, 7, 6, 1]
    assert all(chunk.endswith(b"\n") for chunk in chunks)
    assert verify(b"".join(chunks).splitlines(keepends=True), signer).entries == N


@pytest.mark.parametrize(
    ("filters", "want"),
    [
        (ExportFilters(entity_id=KITCHEN), [i for i in range(N) if i % 2 == 0]),
        (ExportFilters(model_version="1.1.0"), list(range(10, N))),
        (ExportFilters(model_name="occupancy", model_version="1.0.0"), list(range(10))),
        (ExportFilters(action="climate.set_temperature"), [i for i in range(N) if i % 3 == 0]),
        (
            ExportFilters(start_us=T0_US + 5_000_000, end_us=T0_US + 12_000_000),
            list(range(5, 12)),
        ),
        (ExportFilters(start_us=T0_US + 15_000_000), list(range(15, N))),
        (ExportFilters(end_us=T0_US + 3_000_000, entity_id=HALL), [1]),
        (ExportFilters(entity_id="switch.nothing"), []),
    ],
)
def test_filtered_round_trip(
    shared_store: AuditStore, signer: NoteSigner, filters: ExportFilters, want: list[int]
) -> None:
    lines = export(shared_store, sign(shared_store, signer), filters, page_size=4)
    header = obj(lines[0])
    assert header["complete"] is False
    assert header["filters"] == filters.to_json()
    assert [index for index, _, _ in iter_decisions(lines)] == want
    report = verify(lines, signer)
    assert report.entries == len(want)
    assert not report.complete
    assert report.first_index == (want[0] if want else None)
    assert report.last_index == (want[-1] if want else None)


def test_consistency_with_earlier_checkpoints(db: Path, signer: NoteSigner) -> None:
    store = AuditStore.open(db)
    held = {0: sign_checkpoint(signer, Checkpoint(ORIGIN, 0, EMPTY_ROOT))}
    for size in (1, 3, 8, 13):
        store.append([logged(i) for i in range(store.tree_size(), size)])
        held[size] = sign(store, signer)
    store.append([logged(i) for i in range(13, N)])
    note = sign(store, signer)
    lines = export(store, note, consistency_from=[13, 1, 8, 3, 8, 0, N])
    assert [c["from_size"] for c in obj(lines[0])["consistency"]] == [0, 1, 3, 8, 13, N]
    report = verify(lines, signer, previous_checkpoints=[held[8], held[1], held[0], note])
    assert report.consistency_checked == (8, 1, 0, N)
    # Equal sizes and size 0 need no proof in the bundle.
    bare = export(store, note)
    assert verify(bare, signer, previous_checkpoints=[note, held[0]]).consistency_checked == (
        N,
        0,
    )
    store.close()


def test_consistency_sizes_are_checked(shared_store: AuditStore, signer: NoteSigner) -> None:
    note = sign(shared_store, signer, 10)
    with pytest.raises(InvalidArgument, match="consistency_from_sizes: 11 is not between 0 and"):
        iter_bundle(
            shared_store, note=note, origin=ORIGIN, filters=ExportFilters(), consistency_from=[11]
        )
    with pytest.raises(InvalidArgument, match="consistency_from_sizes: -1"):
        iter_bundle(
            shared_store, note=note, origin=ORIGIN, filters=ExportFilters(), consistency_from=[-1]
        )


def test_export_refuses_bad_notes(shared_store: AuditStore, signer: NoteSigner) -> None:
    note = sign(shared_store, signer)
    with pytest.raises(InvalidArgument, match=r"is not 'roost\.local/hub/other'"):
        iter_bundle(
            shared_store, note=note, origin="roost.local/hub/other", filters=ExportFilters()
        )
    with pytest.raises(InvalidArgument, match="note: not a signed note"):
        iter_bundle(shared_store, note="garbage\n", origin=ORIGIN, filters=ExportFilters())
    with pytest.raises(InvalidArgument, match="note: checkpoint"):
        iter_bundle(shared_store, note="x\n\n- sig\n", origin=ORIGIN, filters=ExportFilters())
    with pytest.raises(InvalidArgument, match="page_size"):
        iter_bundle(shared_store, note=note, origin=ORIGIN, filters=ExportFilters(), page_size=0)
    # The store is only read on next(): the root and the size are checked there.
    forged = sign_checkpoint(signer, Checkpoint(ORIGIN, N, hashlib.sha256(b"x").digest()))
    chunks = iter_bundle(shared_store, note=forged, origin=ORIGIN, filters=ExportFilters())
    with pytest.raises(FailedPrecondition, match="differs from the checkpoint's"):
        next(chunks)
    ahead = sign_checkpoint(signer, Checkpoint(ORIGIN, N + 1, shared_store.root()))
    with pytest.raises(FailedPrecondition, match="larger than the log's tree size"):
        next(iter_bundle(shared_store, note=ahead, origin=ORIGIN, filters=ExportFilters()))


def test_omitted_inputs(shared_store: AuditStore, signer: NoteSigner) -> None:
    lines = export(shared_store, sign(shared_store, signer), omit_inputs=True)
    assert obj(lines[0])["inputs"] == "omitted"
    assert all(obj(line)["inputs"] is None for line in lines[1:-1])
    assert verify(lines, signer).entries == N
    assert not any(d.HasField("inputs") for _, d, _ in iter_decisions(lines))


def redact(db: Path, index: int) -> None:
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE inputs SET data = NULL, redacted_at_us = 1 WHERE idx = ?", (index,))
    conn.close()


def test_redacted_inputs(signer: NoteSigner, db: Path) -> None:
    store = new_store(db)
    redact(db, 3)
    redact(db, 7)
    lines = export(store, sign(store, signer))
    store.close()
    for index in (3, 7):
        entry = obj(lines[index + 1])
        assert entry["inputs"] is None
        assert entry["inputs_redacted"] is True
    report = verify(lines, signer)
    assert (report.entries, report.redacted) == (N, 2)
    decisions = {index: (d, r) for index, d, r in iter_decisions(lines)}
    assert decisions[3][1] is True
    assert not decisions[3][0].HasField("inputs")
    assert decisions[3][0].inputs_digest  # the digest stays in the record
