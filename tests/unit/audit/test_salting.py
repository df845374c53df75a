"""Erasure that erases: a redacted decision's digest no longer reveals its inputs.

The attack from issue 14: the inputs of a decision are low-entropy (time of day plus a
few readings near typical values), so from an unsalted ``inputs_digest``, which stays
in the signed record for ever, a brute force recovers them after redaction. With the
salt stored beside the inputs and erased with them, the same brute force finds nothing,
and the salt is gone from the database file. Entries logged before salting still verify.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from roost.audit.v1 import audit_service_pb2 as pb
from roost.common.v1 import common_pb2
from services.audit import records, salting
from services.audit.bundle_format import ExportFilters
from services.audit.checkpoint import NoteSigner
from services.audit.export import iter_bundle
from services.audit.store import AuditStore
from services.audit.verify import BundleError
from tests.support.audit_bundles import ORIGIN, sign, verify
from tests.support.audit_records import T0_US, decision

FEATURES = ["minute_of_day", "co2_ppm", "motion"]
SECRET = (17 * 60 + 35, 612.0, 1.0)  # 17:35, 612 ppm, motion


def inputs_of(minute: int, co2: float, motion: float) -> pb.DecisionInputs:
    return pb.DecisionInputs(
        feature_names=FEATURES,
        tensor=common_pb2.Tensor(
            dtype=common_pb2.DATA_TYPE_FLOAT32, shape=[3], float_values=[minute, co2, motion]
        ),
    )


def candidates() -> Iterator[tuple[tuple[int, float, float], bytes]]:
    """The attacker's guesses: every 5 minutes of the day, CO2 within 15 ppm of a typical
    612, motion or not (17,856 inputs), each deterministically serialized."""
    for minute in range(0, 24 * 60, 5):
        for co2 in range(597, 628):
            for motion in (0.0, 1.0):
                guess = (minute, float(co2), motion)
                yield guess, inputs_of(*guess).SerializeToString(deterministic=True)


def brute_force(digest: str) -> tuple[int, float, float] | None:
    """What the issue's attacker ran: SHA-256 of each guess against the record's digest."""
    for guess, data in candidates():
        if hashlib.sha256(data).hexdigest() == digest:
            return guess
    return None


def secret_decision(i: int) -> pb.Decision:
    d = decision(i, with_inputs=False)
    d.inputs.CopyFrom(inputs_of(*SECRET))
    return d


def on_disk(db: Path) -> bytes:
    return b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))


def test_the_brute_force_recovers_unsalted_inputs_but_not_redacted_salted_ones(
    tmp_path: Path,
) -> None:
    # The attack works against a plain digest (as logged before salting)...
    plain = hashlib.sha256(inputs_of(*SECRET).SerializeToString(deterministic=True)).hexdigest()
    assert brute_force(plain) == SECRET

    # ...and fails against a salted one once the inputs (and their salt) are erased.
    db = tmp_path / "audit.db"
    store = AuditStore.open(db)
    try:
        store.append([secret_decision(1)])
        stored = store.get(secret_decision(1).decision_id).decision.inputs
        salt = stored.salt
        assert len(salt) == salting.SALT_BYTES
        assert salt in on_disk(db)  # so that its absence below means something
        store.redact_inputs(secret_decision(1).decision_id, "erasure request", T0_US)
        entry = store.get(secret_decision(1).decision_id)
        assert entry.inputs_redacted
        assert not entry.decision.HasField("inputs")
        digest = pb.Decision.FromString(entry.record).inputs_digest
        assert digest != plain
        assert brute_force(digest) is None
        assert salt not in on_disk(db)
    finally:
        store.close()


def test_salted_and_plain_digests_of_stored_inputs() -> None:
    data = inputs_of(*SECRET).SerializeToString(deterministic=True)
    assert salting.stored_digest(data) == hashlib.sha256(data).hexdigest()
    stored, digest = salting.salt_inputs(data, salting.fresh_salts(1))
    salt = pb.DecisionInputs.FromString(stored).salt
    assert digest == hashlib.sha256(salt + data).hexdigest()
    assert salting.stored_digest(stored) == digest
    # The stored bytes are the deterministic serialization, salt included.
    assert pb.DecisionInputs.FromString(stored).SerializeToString(deterministic=True) == stored
    assert salting.fresh_salts(1) != salting.fresh_salts(1)  # a fresh salt every time
    short = pb.DecisionInputs(salt=b"\x01" * 16).SerializeToString()
    with pytest.raises(salting.InputsError, match="salt is 16 bytes, not 32"):
        salting.stored_digest(short)
    with pytest.raises(salting.InputsError, match="not a DecisionInputs"):
        salting.stored_digest(b"\xff\xff\xff")


def legacy_record(i: int) -> records.PreparedRecord:
    """An entry as logged before salting: plain digest, inputs stored without salt."""
    d = secret_decision(i)
    data = d.inputs.SerializeToString(deterministic=True)
    d.ClearField("inputs")
    d.inputs_digest = hashlib.sha256(data).hexdigest()
    record = d.SerializeToString(deterministic=True)
    return records.PreparedRecord(
        d.decision_id,
        T0_US,
        d.entity_id,
        d.model.name,
        d.model.version,
        d.action,
        record,
        data,
    )


def test_plain_and_salted_entries_verify_side_by_side(tmp_path: Path, signer: NoteSigner) -> None:
    store = AuditStore.open(tmp_path / "audit.db")
    try:
        store.append_prepared([[legacy_record(0)]])
        store.append([secret_decision(1)])
        note = sign(store, signer)
        data = b"".join(iter_bundle(store, note=note, origin=ORIGIN, filters=ExportFilters()))
    finally:
        store.close()
    lines = data.splitlines(keepends=True)
    assert verify(lines, signer).entries == 2
    # Swapping the salt, or dropping it (the other scheme), breaks the match either way.
    for n in (2, 3):
        entry = json.loads(lines[n - 1])
        inputs = pb.DecisionInputs.FromString(base64.b64decode(entry["inputs"]))
        if inputs.salt:
            inputs.ClearField("salt")
        else:
            inputs.salt = b"\x00" * salting.SALT_BYTES
        entry["inputs"] = base64.b64encode(inputs.SerializeToString(deterministic=True)).decode()
        edited = list(lines)
        edited[n - 1] = (json.dumps(entry, separators=(",", ":")) + "\n").encode()
        with pytest.raises(BundleError, match="inputs do not match the record's inputs_digest"):
            verify(edited, signer)
