"""The offline bundle verifier: it accepts what the hub exported and rejects every kind
of damaged or forged bundle with a message naming line and index; it needs no store."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from services.audit import records
from services.audit.bundle_format import ExportFilters
from services.audit.checkpoint import Checkpoint, NoteSigner, sign_checkpoint
from services.audit.store import AuditStore
from services.audit.tlog_proof import TlogProof
from services.audit.verify import BundleError, iter_decisions, verify_bundle
from tests.support.audit_bundles import (
    KITCHEN,
    ORIGIN,
    Lines,
    N,
    dump,
    edit,
    edit_proof,
    export,
    logged,
    obj,
    rejects,
    sign,
    synthetic,
    verify,
)
from tests.support.audit_records import T0_US


def test_verify_accepts_text_lines_and_a_file(
    shared_store: AuditStore, signer: NoteSigner, tmp_path: Path
) -> None:
    lines = export(shared_store, sign(shared_store, signer))
    assert verify([line.decode() for line in lines], signer).entries == N
    path = tmp_path / "export.jsonl"
    path.write_bytes(b"".join(lines))
    with path.open("rb") as f:
        assert verify_bundle(f, signer.verifier()).entries == N
    with path.open(encoding="utf-8") as f:
        assert verify_bundle(f, signer.verifier()).entries == N


def test_iter_decisions(shared_store: AuditStore, signer: NoteSigner) -> None:
    lines = export(shared_store, sign(shared_store, signer))
    out = list(iter_decisions(lines))
    assert [index for index, _, _ in out] == list(range(N))
    for index, d, redacted in out:
        want = shared_store.get(logged(index).decision_id).decision
        assert d == want
        assert d.HasField("inputs") == (index % 5 != 4)
        assert not redacted


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
    forged.ClearField("inputs")
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


def test_inputs_in_a_bundle_that_omits_them(shared_store: AuditStore, signer: NoteSigner) -> None:
    omitted = export(shared_store, sign(shared_store, signer), omit_inputs=True)
    full = export(shared_store, sign(shared_store, signer))
    omitted[3] = full[3]
    rejects(omitted, signer, r"^line 4 \(index 2\): inputs are present but the header says omitted")


def test_reordered_lines(lines: Lines, signer: NoteSigner, shared_store: AuditStore) -> None:
    swapped = list(lines)
    swapped[3], swapped[4] = swapped[4], swapped[3]
    rejects(swapped, signer, r"^line 4 \(index 3\): a complete bundle has index 2 here")
    filtered = export(shared_store, sign(shared_store, signer), ExportFilters(entity_id=KITCHEN))
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
    lines: Lines, shared_store: AuditStore, signer: NoteSigner
) -> None:
    older = export(shared_store, sign(shared_store, signer, 10))
    mixed = [*lines[:3], older[3], *lines[4:]]
    rejects(
        mixed,
        signer,
        r"^line 4 \(index 2\): the proof's checkpoint differs from the header's:"
        " the proof was made against another checkpoint",
    )
    # The same checkpoint with one more (witness) signature is another note, too.
    witness = NoteSigner.generate("witness.example")
    body = Checkpoint(ORIGIN, N, shared_store.root()).body()
    cosigned = sign(shared_store, signer) + witness.sign(body).rsplit("\n\n", 1)[1]
    assert signer.verifier().verify(cosigned) == body
    rejects(edit_proof(lines, 4, checkpoint=cosigned), signer, "checkpoint differs")


def test_entry_outside_the_filters(shared_store: AuditStore, signer: NoteSigner) -> None:
    note = sign(shared_store, signer)
    filtered = export(shared_store, note, ExportFilters(entity_id=KITCHEN))  # 0, 2, 4, ...
    full = export(shared_store, note)
    forged = [*filtered[:2], full[2], *filtered[2:-1], dump({"end": True, "entries": N // 2 + 1})]
    rejects(forged, signer, r"^line 3 \(index 1\): the entry does not match the header's entity_id")
    timed = export(shared_store, note, ExportFilters(start_us=T0_US + 5_000_000))
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
    shared_store: AuditStore, signer: NoteSigner, lines: Lines
) -> None:
    held = sign(shared_store, signer, 8)
    rejects(
        lines,
        signer,
        "previous checkpoint #1 \\(tree size 8\\): the bundle has no consistency proof from"
        " tree size 8; export again with --previous and that checkpoint's note"
        " \\(roost audit export --previous NOTE\\)",
        previous_checkpoints=[held],
    )


def test_previous_checkpoint_from_another_log(
    shared_store: AuditStore, signer: NoteSigner, lines: Lines
) -> None:
    other = NoteSigner.generate("roost.local/hub/other-hub")
    foreign = sign_checkpoint(other, Checkpoint(other.name, 8, shared_store.root(8)))
    rejects(
        lines,
        signer,
        r"previous checkpoint #1 does not verify with key roost.local/hub/hub-test \(is it from"
        " another log\\?\\)",
        previous_checkpoints=[foreign],
    )


def test_previous_checkpoint_newer_than_bundle(
    shared_store: AuditStore, signer: NoteSigner
) -> None:
    old = export(shared_store, sign(shared_store, signer, 8))
    rejects(
        old,
        signer,
        r"^previous checkpoint #1 has tree size 20, larger than the bundle's 8\. Either the"
        r" bundle was exported before you got that checkpoint \(export again, with"
        r" --previous, and verify the new bundle\), or the log was rolled back or forked"
        r" below tree size 20 since it signed that checkpoint: a serious finding\. A fresh"
        r" export whose tree size is still below 20 means the latter$",
        previous_checkpoints=[sign(shared_store, signer)],
    )


def test_previous_checkpoint_of_a_fork(shared_store: AuditStore, signer: NoteSigner) -> None:
    """A checkpoint at size 8 with another root: same key, inconsistent history."""
    fork = sign_checkpoint(signer, Checkpoint(ORIGIN, 8, hashlib.sha256(b"fork").digest()))
    lines = export(shared_store, sign(shared_store, signer), consistency_from=[8])
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


def test_the_verifier_needs_no_store() -> None:
    """An auditor's machine verifies with the bundle and the key alone: importing the
    verifier loads no store, database, Merkle-tree storage or gRPC code."""
    code = (
        "import sys, services.audit.verify\n"
        "banned = ['sqlite3', 'grpc', 'services.audit.store', 'services.audit.log',"
        " 'services.audit.tree', 'services.audit.query', 'services.audit.export',"
        " 'services.audit.servicer']\n"
        "print(sorted(m for m in banned if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
