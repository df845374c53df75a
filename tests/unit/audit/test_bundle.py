"""Export bundles (roost.audit.bundle/v1): export from a real store, verify offline, and
reject every kind of damaged or forged bundle with a message naming line and index."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from roost.audit.v1 import audit_service_pb2 as pb
from services.audit import records
from services.audit.bundle import (
    FORMAT,
    BundleError,
    BundleReport,
    ExportFilters,
    iter_bundle,
    iter_decisions,
    verify_bundle,
)
from services.audit.checkpoint import Checkpoint, NoteSigner, sign_checkpoint
from services.audit.merkle import EMPTY_ROOT, MemoryTree
from services.audit.store import AuditStore
from services.audit.tlog_proof import TlogProof
from services.kit.errors import FailedPrecondition, InvalidArgument
from tests.support.audit_records import T0_US, decision

ORIGIN = "roost.local/hub/hub-test"
N = 20
KITCHEN = "binary_sensor.kitchen_occupancy"
HALL = "binary_sensor.hall_occupancy"

Lines = list[bytes]


def logged(i: int) -> pb.Decision:
    """The i-th decision of the test log: two entities, two model versions, two actions,
    and every fifth without inputs."""
    return decision(
        i,
        entity_id=KITCHEN if i % 2 == 0 else HALL,
        model=("occupancy", "1.0.0" if i < 10 else "1.1.0"),
        action="climate.set_temperature" if i % 3 == 0 else "publish",
        with_inputs=i % 5 != 4,
    )


@pytest.fixture(scope="module")
def signer() -> NoteSigner:
    return NoteSigner.generate(ORIGIN)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "audit" / "audit.db"


def new_store(db: Path) -> AuditStore:
    s = AuditStore.open(db)
    s.append([logged(i) for i in range(N)])
    return s


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuditStore]:
    """The test log, shared by the module: tests must not write to it."""
    s = new_store(tmp_path_factory.mktemp("bundle") / "audit.db")
    yield s
    s.close()


def sign(store: AuditStore, signer: NoteSigner, size: int | None = None) -> str:
    size = store.tree_size() if size is None else size
    return sign_checkpoint(signer, Checkpoint(signer.name, size, store.root(size)))


def export(
    store: AuditStore, note: str, filters: ExportFilters | None = None, **kwargs: Any
) -> Lines:
    data = b"".join(
        iter_bundle(store, note=note, origin=ORIGIN, filters=filters or ExportFilters(), **kwargs)
    )
    return data.splitlines(keepends=True)


def verify(lines: Iterable[str | bytes], signer: NoteSigner, **kwargs: Any) -> BundleReport:
    return verify_bundle(lines, signer.verifier(), **kwargs)


def obj(line: bytes) -> dict[str, Any]:
    out = json.loads(line)
    assert isinstance(out, dict)
    return out


def dump(o: dict[str, Any]) -> bytes:
    return (json.dumps(o) + "\n").encode()


def edit(lines: Lines, n: int, change: Callable[[dict[str, Any]], None]) -> Lines:
    """A copy of ``lines`` with line ``n`` (1-based) edited as JSON."""
    out = list(lines)
    o = obj(out[n - 1])
    change(o)
    out[n - 1] = dump(o)
    return out


def edit_proof(lines: Lines, n: int, **changes: Any) -> Lines:
    def change(o: dict[str, Any]) -> None:
        proof = TlogProof.parse(o["proof"])
        o["proof"] = dataclasses.replace(proof, **changes).marshal()

    return edit(lines, n, change)


# ------------------------------------------------------------------ round trips


def test_whole_log_round_trip(store: AuditStore, signer: NoteSigner) -> None:
    note = sign(store, signer)
    lines = export(store, note)
    assert len(lines) == N + 2

    header = obj(lines[0])
    assert header["format"] == FORMAT == "roost.audit.bundle/v1"
    assert header["origin"] == ORIGIN
    assert header["tree_size"] == N
    assert base64.b64decode(header["root_hash"]) == store.root()
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
        stored = store.get(logged(i).decision_id)
        assert proof.index == i
        assert proof.extra == stored.record
        assert proof.checkpoint == note
        assert list(proof.hashes) == store.inclusion_proof(i, N)
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
        root_hash=store.root(),
        entries=N,
        redacted=0,
        complete=True,
        consistency_checked=(),
        first_index=0,
        last_index=N - 1,
    )
    assert len(seen) == N


def test_verify_accepts_text_lines_and_a_file(
    store: AuditStore, signer: NoteSigner, tmp_path: Path
) -> None:
    lines = export(store, sign(store, signer))
    assert verify([line.decode() for line in lines], signer).entries == N
    path = tmp_path / "export.jsonl"
    path.write_bytes(b"".join(lines))
    with path.open("rb") as f:
        assert verify_bundle(f, signer.verifier()).entries == N
    with path.open(encoding="utf-8") as f:
        assert verify_bundle(f, signer.verifier()).entries == N


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7, 8, 9, 13, 16, 17, 20])
def test_proofs_at_every_tree_size(store: AuditStore, signer: NoteSigner, size: int) -> None:
    """An export at an older checkpoint pins its tree size (newer entries are left out)."""
    lines = export(store, sign(store, signer, size), page_size=3)
    assert len(lines) == size + 2
    for i, line in enumerate(lines[1:-1]):
        proof = TlogProof.parse(obj(line)["proof"])
        assert proof.index == i
        assert list(proof.hashes) == store.inclusion_proof(i, size)
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


def test_chunks_are_whole_lines_one_page_each(store: AuditStore, signer: NoteSigner) -> None:
    chunks = list(
        iter_bundle(
            store, note=sign(store, signer), origin=ORIGIN, filters=ExportFilters(), page_size=7
        )
    )
    assert [chunk.count(b"\n") for chunk in chunks] == [1, 7, 7, 6, 1]
    assert all(chunk.endswith(b"\n") for chunk in chunks)
    assert verify(b"".join(chunks).splitlines(keepends=True), signer).entries == N


def test_iter_decisions(store: AuditStore, signer: NoteSigner) -> None:
    lines = export(store, sign(store, signer))
    out = list(iter_decisions(lines))
    assert [index for index, _, _ in out] == list(range(N))
    for index, d, redacted in out:
        want = store.get(logged(index).decision_id).decision
        assert d == want
        assert d.HasField("inputs") == (index % 5 != 4)
        assert not redacted


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
    store: AuditStore, signer: NoteSigner, filters: ExportFilters, want: list[int]
) -> None:
    lines = export(store, sign(store, signer), filters, page_size=4)
    header = obj(lines[0])
    assert header["complete"] is False
    assert header["filters"] == filters.to_json()
    assert [index for index, _, _ in iter_decisions(lines)] == want
    report = verify(lines, signer)
    assert report.entries == len(want)
    assert not report.complete
    assert report.first_index == (want[0] if want else None)
    assert report.last_index == (want[-1] if want else None)


def test_export_filters_json() -> None:
    assert ExportFilters().is_empty()
    assert ExportFilters().to_json() == {}
    assert not ExportFilters(start_us=0).is_empty()
    f = ExportFilters(start_us=0, end_us=5, entity_id="e", action="a")
    assert f.to_json() == {"start_us": 0, "end_us": 5, "entity_id": "e", "action": "a"}
    assert ExportFilters.from_json(f.to_json()) == f


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


def test_consistency_sizes_are_checked(store: AuditStore, signer: NoteSigner) -> None:
    note = sign(store, signer, 10)
    with pytest.raises(InvalidArgument, match="consistency_from_sizes: 11 is not between 0 and"):
        iter_bundle(store, note=note, origin=ORIGIN, filters=ExportFilters(), consistency_from=[11])
    with pytest.raises(InvalidArgument, match="consistency_from_sizes: -1"):
        iter_bundle(store, note=note, origin=ORIGIN, filters=ExportFilters(), consistency_from=[-1])


def test_export_refuses_bad_notes(store: AuditStore, signer: NoteSigner) -> None:
    note = sign(store, signer)
    with pytest.raises(InvalidArgument, match=r"is not 'roost\.local/hub/other'"):
        iter_bundle(store, note=note, origin="roost.local/hub/other", filters=ExportFilters())
    with pytest.raises(InvalidArgument, match="note: not a signed note"):
        iter_bundle(store, note="garbage\n", origin=ORIGIN, filters=ExportFilters())
    with pytest.raises(InvalidArgument, match="note: checkpoint"):
        iter_bundle(store, note="x\n\n- sig\n", origin=ORIGIN, filters=ExportFilters())
    with pytest.raises(InvalidArgument, match="page_size"):
        iter_bundle(store, note=note, origin=ORIGIN, filters=ExportFilters(), page_size=0)
    # The store is only read on next(): the root and the size are checked there.
    forged = sign_checkpoint(signer, Checkpoint(ORIGIN, N, hashlib.sha256(b"x").digest()))
    chunks = iter_bundle(store, note=forged, origin=ORIGIN, filters=ExportFilters())
    with pytest.raises(FailedPrecondition, match="differs from the checkpoint's"):
        next(chunks)
    ahead = sign_checkpoint(signer, Checkpoint(ORIGIN, N + 1, store.root()))
    with pytest.raises(FailedPrecondition, match="larger than the log's tree size"):
        next(iter_bundle(store, note=ahead, origin=ORIGIN, filters=ExportFilters()))


def test_omitted_inputs(store: AuditStore, signer: NoteSigner) -> None:
    lines = export(store, sign(store, signer), omit_inputs=True)
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


# ------------------------------------------------------------------ rejections


@pytest.fixture(scope="module")
def lines(store: AuditStore, signer: NoteSigner) -> Lines:
    """The whole log's bundle; tests edit copies."""
    return export(store, sign(store, signer))


def rejects(lines: Lines, signer: NoteSigner, message: str, **kwargs: Any) -> None:
    with pytest.raises(BundleError, match=message):
        verify(lines, signer, **kwargs)


def test_wrong_key(lines: Lines) -> None:
    impostor = NoteSigner.generate(ORIGIN)  # same name, another key
    with pytest.raises(
        BundleError, match=r"^line 1: the checkpoint does not verify with key roost.local/hub/"
    ):
        verify(lines, impostor)
    other = NoteSigner.generate("roost.local/hub/other")
    rejects(lines, other, "line 1: the checkpoint does not verify with key")


def test_truncated_file(lines: Lines, signer: NoteSigner) -> None:
    data = b"".join(lines)
    cut = data[: len(data) // 2].splitlines(keepends=True)
    rejects(cut, signer, rf"^line {len(cut)}: does not end with a newline: the bundle is truncated")
    rejects(lines[:-4], signer, r"^the bundle ends after line 18 without the trailer line")
    rejects(lines[:1], signer, "without the trailer line")
    rejects([], signer, "the bundle is empty")


def test_missing_trailer(lines: Lines, signer: NoteSigner) -> None:
    rejects(lines[:-1], signer, rf"^the bundle ends after line {N + 1} without the trailer line")


def test_bad_trailer(lines: Lines, signer: NoteSigner) -> None:
    rejects(
        [*lines[:-1], dump({"end": True, "entries": N + 1})],
        signer,
        rf"^line {N + 2}: the trailer counts {N + 1} entries but the bundle has {N}",
    )
    rejects([*lines[:-1], dump({"end": True})], signer, "the trailer must be")
    rejects([*lines[:-1], dump({"end": 1, "entries": N})], signer, "the trailer must be")
    rejects([*lines, lines[1]], signer, rf"^line {N + 3}: data after the trailer")
    rejects([*lines, b"\n"], signer, rf"^line {N + 3}: data after the trailer")


def test_removed_entries(lines: Lines, signer: NoteSigner) -> None:
    # A gap in a complete bundle.
    rejects(
        lines[:5] + lines[6:],
        signer,
        r"^line 6 \(index 5\): a complete bundle has index 4 here: entries are missing",
    )
    # The last entry removed: first the trailer count gives it away...
    rejects(
        lines[:-2] + lines[-1:], signer, rf"trailer counts {N} entries but the bundle has {N - 1}"
    )
    # ... and with the trailer fixed too, the tree size does.
    fixed = [*lines[:-2], dump({"end": True, "entries": N - 1})]
    rejects(fixed, signer, rf"complete bundle has {N - 1} entries but the tree has {N}")


def test_edited_record(lines: Lines, signer: NoteSigner) -> None:
    forged = logged(3)
    forged.action = "lock.unlock"
    forged.inputs_digest = records.inputs_digest(forged.inputs)
    edited = edit_proof(lines, 5, extra=records.record_bytes(forged))
    with pytest.raises(BundleError) as info:
        verify(edited, signer)
    assert str(info.value) == (
        "line 5 (index 3): inclusion proof does not lead to the checkpoint root:"
        " the entry was altered or is not in the log"
    )


def test_edited_proof_hash_and_length(lines: Lines, signer: NoteSigner) -> None:
    proof = TlogProof.parse(obj(lines[4])["proof"])
    bad = (hashlib.sha256(b"x").digest(), *proof.hashes[1:])
    rejects(
        edit_proof(lines, 5, hashes=bad),
        signer,
        r"^line 5 \(index 3\): inclusion proof does not lead",
    )
    rejects(
        edit_proof(lines, 5, hashes=proof.hashes[:-1]),
        signer,
        r"^line 5 \(index 3\): inclusion proof has the wrong number of hashes",
    )
    rejects(
        edit_proof(lines, 5, hashes=(*proof.hashes, proof.hashes[0])),
        signer,
        "wrong number of hashes",
    )


def test_edited_inputs(lines: Lines, signer: NoteSigner) -> None:
    other = logged(2).inputs
    other.tensor.float_values[0] = 400.0

    def change(o: dict[str, Any]) -> None:
        o["inputs"] = base64.b64encode(other.SerializeToString(deterministic=True)).decode()

    rejects(
        edit(lines, 4, change),
        signer,
        r"^line 4 \(index 2\): inputs do not match the record's inputs_digest",
    )

    def add(o: dict[str, Any]) -> None:  # inputs on an entry logged without
        o["inputs"] = base64.b64encode(other.SerializeToString(deterministic=True)).decode()

    rejects(edit(lines, 6, add), signer, r"^line 6 \(index 4\): inputs do not match")

    def garble(o: dict[str, Any]) -> None:
        o["inputs"] = "not base64!"

    rejects(edit(lines, 4, garble), signer, r"^line 4 \(index 2\): inputs is not valid base64")


def test_inputs_on_redacted_entry(lines: Lines, signer: NoteSigner) -> None:
    def change(o: dict[str, Any]) -> None:
        o["inputs_redacted"] = True

    rejects(
        edit(lines, 4, change),
        signer,
        r"^line 4 \(index 2\): inputs are present on an entry marked redacted",
    )


def test_inputs_in_a_bundle_that_omits_them(store: AuditStore, signer: NoteSigner) -> None:
    omitted = export(store, sign(store, signer), omit_inputs=True)
    full = export(store, sign(store, signer))
    omitted[3] = full[3]
    rejects(omitted, signer, r"^line 4 \(index 2\): inputs are present but the header says omitted")


def test_reordered_lines(lines: Lines, signer: NoteSigner, store: AuditStore) -> None:
    swapped = list(lines)
    swapped[3], swapped[4] = swapped[4], swapped[3]
    rejects(swapped, signer, r"^line 4 \(index 3\): a complete bundle has index 2 here")
    filtered = export(store, sign(store, signer), ExportFilters(entity_id=KITCHEN))
    filtered[2], filtered[3] = filtered[3], filtered[2]
    rejects(
        filtered,
        signer,
        r"^line 4 \(index 2\): index is not greater than the previous entry's \(4\):"
        " entries are out of order or repeated",
    )
    repeated = [*filtered[:3], filtered[2], *filtered[3:]]
    rejects(repeated, signer, r"^line 4 \(index 4\): index is not greater")


def test_proof_against_another_checkpoint(
    lines: Lines, store: AuditStore, signer: NoteSigner
) -> None:
    older = export(store, sign(store, signer, 10))
    mixed = [*lines[:3], older[3], *lines[4:]]
    rejects(
        mixed,
        signer,
        r"^line 4 \(index 2\): the proof's checkpoint differs from the header's:"
        " the proof was made against another checkpoint",
    )
    # The same checkpoint with one more (witness) signature is another note, too.
    witness = NoteSigner.generate("witness.example")
    body = Checkpoint(ORIGIN, N, store.root()).body()
    cosigned = sign(store, signer) + witness.sign(body).rsplit("\n\n", 1)[1]
    assert signer.verifier().verify(cosigned) == body
    rejects(edit_proof(lines, 4, checkpoint=cosigned), signer, "checkpoint differs")


def test_entry_outside_the_filters(store: AuditStore, signer: NoteSigner) -> None:
    note = sign(store, signer)
    filtered = export(store, note, ExportFilters(entity_id=KITCHEN))  # 0, 2, 4, ...
    full = export(store, note)
    forged = [*filtered[:2], full[2], *filtered[2:-1], dump({"end": True, "entries": N // 2 + 1})]
    rejects(forged, signer, r"^line 3 \(index 1\): the entry does not match the header's entity_id")
    timed = export(store, note, ExportFilters(start_us=T0_US + 5_000_000))
    forged = [timed[0], full[5], *timed[1:]]
    rejects(forged, signer, r"^line 2 \(index 4\): the entry does not match the header's start_us")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda h: h.update(format="roost.audit.bundle/v2"), "line 1: not a roost.audit.bundle/v1"),
        (lambda h: h.pop("format"), "line 1: not a roost.audit.bundle/v1 header"),
        (lambda h: h.pop("consistency"), "line 1: header lacks consistency"),
        (lambda h: h.update(extra=1), "line 1: header has unknown fields extra"),
        (lambda h: h.update(checkpoint=None), "checkpoint must be the signed note text"),
        (lambda h: h.update(checkpoint=h["checkpoint"][:-3]), "does not verify"),
        (lambda h: h.update(origin="roost.local/hub/x"), "header origin .* differs"),
        (lambda h: h.update(tree_size=N - 1), f"header tree_size {N - 1} differs .* {N}"),
        (lambda h: h.update(tree_size=float(N)), "header tree_size"),
        (lambda h: h.update(root_hash=base64.b64encode(bytes(32)).decode()), "root_hash differs"),
        (lambda h: h.update(complete=1), "complete must be true or false"),
        (lambda h: h.update(complete=False), "says not complete but lists no filters"),
        (lambda h: h.update(filters={"entity_id": KITCHEN}), "says complete but lists filters"),
        (lambda h: h.update(filters={"color": "red"}), r"unknown filters \['color'\]"),
        (lambda h: h.update(filters={"entity_id": ""}), "entity_id must be a non-empty string"),
        (lambda h: h.update(filters={"start_us": "0"}), "start_us must be an integer"),
        (lambda h: h.update(filters=[]), "filters must be an object"),
        (lambda h: h.update(inputs="some"), "inputs must be 'included' or 'omitted'"),
        (lambda h: h.update(exported_at="yesterday"), "exported_at must be an RFC 3339"),
        (lambda h: h.update(exported_at=0), "exported_at must be an RFC 3339"),
        (lambda h: h.update(consistency={}), "consistency must be a list"),
        (lambda h: h.update(consistency=[{"from_size": 1}]), r"consistency\[0\] must be"),
        (
            lambda h: h.update(consistency=[{"from_size": N + 1, "hashes": []}]),
            "from_size must be an integer between 0 and",
        ),
        (
            lambda h: h.update(consistency=[{"from_size": 1, "hashes": ["xx"]}]),
            r"hashes\[0\] is not valid base64",
        ),
        (
            lambda h: h.update(
                consistency=[{"from_size": 1, "hashes": [base64.b64encode(bytes(31)).decode()]}]
            ),
            "hashes must be 32 bytes each",
        ),
        (
            lambda h: h.update(
                consistency=[{"from_size": 1, "hashes": []}, {"from_size": 1, "hashes": []}]
            ),
            "a second proof from tree size 1",
        ),
    ],
)
def test_bad_header(
    lines: Lines, signer: NoteSigner, change: Callable[[dict[str, Any]], Any], message: str
) -> None:
    rejects(edit(lines, 1, change), signer, message)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"not json\n", "line 1: not valid JSON"),
        (b"[1, 2]\n", "line 1: not a JSON object"),
        (b"\xff\n", "line 1: not valid JSON"),
    ],
)
def test_unreadable_header(lines: Lines, signer: NoteSigner, line: bytes, message: str) -> None:
    rejects([line, *lines[1:]], signer, message)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"{}\n", "line 3: neither an entry nor the trailer"),
        (b'{"proof": "x", "inputs": null}\n', "line 3: an entry must have exactly the fields"),
        (
            b'{"proof": "x", "inputs": null, "inputs_redacted": false}\n',
            "line 3: malformed tlog-proof: no empty line",
        ),
        (b'{"proof": 5, "inputs": null, "inputs_redacted": false}\n', "must be text"),
        (b"{broken\n", "line 3: not valid JSON"),
    ],
)
def test_unreadable_entry(lines: Lines, signer: NoteSigner, line: bytes, message: str) -> None:
    rejects([*lines[:2], line, *lines[3:]], signer, message)


def test_bad_entry_fields(lines: Lines, signer: NoteSigner) -> None:
    def redacted_text(o: dict[str, Any]) -> None:
        o["inputs_redacted"] = "no"

    rejects(edit(lines, 3, redacted_text), signer, r"line 3 \(index 1\): inputs_redacted must be")
    rejects(edit_proof(lines, 3, extra=None), signer, r"line 3 \(index 1\): the proof has no extra")
    rejects(
        edit_proof(lines, 3, index=N),
        signer,
        rf"line 3 \(index {N}\): index is not below the checkpoint's tree size {N}",
    )


def synthetic(signer: NoteSigner, leaves: list[bytes]) -> Lines:
    """A bundle over arbitrary leaf data (for records the store would never accept)."""
    tree = MemoryTree(records.leaf_hash(leaf) for leaf in leaves)
    note = sign_checkpoint(signer, Checkpoint(ORIGIN, tree.size, tree.root()))
    header = {
        "format": FORMAT,
        "origin": ORIGIN,
        "tree_size": tree.size,
        "root_hash": base64.b64encode(tree.root()).decode(),
        "checkpoint": note,
        "complete": True,
        "filters": {},
        "consistency": [],
        "inputs": "included",
        "exported_at": "2026-01-01T00:00:00Z",
    }
    out = [dump(header)]
    for i, leaf in enumerate(leaves):
        proof = TlogProof(i, tuple(tree.inclusion_proof(i)), note, leaf).marshal()
        out.append(dump({"proof": proof, "inputs": None, "inputs_redacted": False}))
    out.append(dump({"end": True, "entries": len(leaves)}))
    return out


def test_synthetic_bundle_verifies(signer: NoteSigner) -> None:
    leaves = [records.record_bytes(logged(i)) for i in range(5)]
    assert verify(synthetic(signer, leaves), signer).entries == 5


def test_record_that_is_not_a_decision(signer: NoteSigner) -> None:
    leaves = [records.record_bytes(logged(0)), b"\xff\xff\xff"]
    rejects(
        synthetic(signer, leaves),
        signer,
        r"^line 3 \(index 1\): the record is not a valid Decision",
    )


def test_record_with_inputs(signer: NoteSigner) -> None:
    leaves = [logged(0).SerializeToString(deterministic=True)]
    rejects(synthetic(signer, leaves), signer, r"^line 2 \(index 0\): the record carries inputs")


def test_previous_checkpoint_without_consistency_proof(
    store: AuditStore, signer: NoteSigner, lines: Lines
) -> None:
    held = sign(store, signer, 8)
    rejects(
        lines,
        signer,
        "previous checkpoint #1 \\(tree size 8\\): the bundle has no consistency proof from"
        " tree size 8; export again with consistency_from_sizes 8",
        previous_checkpoints=[held],
    )


def test_previous_checkpoint_from_another_log(
    store: AuditStore, signer: NoteSigner, lines: Lines
) -> None:
    other = NoteSigner.generate("roost.local/hub/other-hub")
    foreign = sign_checkpoint(other, Checkpoint(other.name, 8, store.root(8)))
    rejects(
        lines,
        signer,
        r"previous checkpoint #1 does not verify with key roost.local/hub/hub-test \(is it from"
        " another log\\?\\)",
        previous_checkpoints=[foreign],
    )


def test_previous_checkpoint_newer_than_bundle(store: AuditStore, signer: NoteSigner) -> None:
    old = export(store, sign(store, signer, 8))
    rejects(
        old,
        signer,
        "previous checkpoint #1 has tree size 20, larger than the bundle's 8",
        previous_checkpoints=[sign(store, signer)],
    )


def test_previous_checkpoint_of_a_fork(store: AuditStore, signer: NoteSigner) -> None:
    """A checkpoint at size 8 with another root: same key, inconsistent history."""
    fork = sign_checkpoint(signer, Checkpoint(ORIGIN, 8, hashlib.sha256(b"fork").digest()))
    lines = export(store, sign(store, signer), consistency_from=[8])
    rejects(
        lines,
        signer,
        r"^line 1: previous checkpoint #1 \(tree size 8\) is not consistent with the bundle's"
        r" checkpoint \(tree size 20\): the log was rewritten since then",
        previous_checkpoints=[fork],
    )
    same_size = sign_checkpoint(signer, Checkpoint(ORIGIN, N, hashlib.sha256(b"fork").digest()))
    rejects(lines, signer, "is not consistent with the bundle's", previous_checkpoints=[same_size])


def test_error_is_a_value_error() -> None:
    assert issubclass(BundleError, ValueError)


def test_lines_not_text(lines: Lines, signer: NoteSigner) -> None:
    with pytest.raises(TypeError, match="pass the bundle's lines"):
        verify_bundle(b"".join(lines), signer.verifier())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="pass the bundle's lines"):
        list(iter_decisions(b"".join(lines).decode()))  # type: ignore[arg-type]


def test_iter_decisions_rejects_garbage(lines: Lines) -> None:
    with pytest.raises(BundleError, match=r"line 1: not a roost\.audit\.bundle/v1 header"):
        list(iter_decisions([b"{}\n", *lines[1:]]))
    with pytest.raises(BundleError, match="the bundle is empty"):
        list(iter_decisions([]))
    with pytest.raises(BundleError, match="line 3: malformed tlog-proof"):
        list(iter_decisions([*lines[:2], b'{"proof": "x"}\n', *lines[3:]]))
    # It does not verify: a stray entry is shown as is, and it stops at the trailer.
    assert [i for i, _, _ in iter_decisions([lines[0], lines[5], lines[-1], b"junk"])] == [4]
