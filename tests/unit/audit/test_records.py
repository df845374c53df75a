"""Decision records: validation naming the field, leaf data without inputs, RFC 9162
leaf hashes, and the consuming fast path."""

from __future__ import annotations

import hashlib

import pytest

from roost.audit.v1 import audit_service_pb2 as pb
from services.audit import records, salting
from services.audit.merkle import leaf_hash
from services.kit.errors import InvalidArgument
from tests.support.audit_records import decision


def test_leaf_hash_is_rfc9162_over_record_without_inputs() -> None:
    d = decision(1)
    rec = records.record_bytes(d)
    stripped = pb.Decision.FromString(rec)
    assert not stripped.HasField("inputs")
    assert leaf_hash(rec) == hashlib.sha256(b"\x00" + rec).digest()
    (prepared,) = records.prepare([d])
    # The inputs are committed to with a fresh 32-byte salt stored with them.
    assert prepared.inputs is not None
    stored = pb.DecisionInputs.FromString(prepared.inputs)
    assert len(stored.salt) == 32
    plain = d.inputs.SerializeToString(deterministic=True)
    assert stored.SerializeToString(deterministic=True) == prepared.inputs
    assert pb.Decision.FromString(prepared.record).inputs_digest == (
        hashlib.sha256(stored.salt + plain).hexdigest()
    )
    (again,) = records.prepare([d])
    assert again.inputs is not None
    assert pb.DecisionInputs.FromString(again.inputs).salt != stored.salt


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


def test_consuming_prepare_gives_the_same_records(monkeypatch: pytest.MonkeyPatch) -> None:
    # The same salt for both runs, so that the records can be compared.
    monkeypatch.setattr(salting.secrets, "token_bytes", lambda n: b"\x07" * n)
    kept = [decision(i) for i in range(3)] + [decision(9, with_inputs=False)]
    consumed = [pb.Decision.FromString(d.SerializeToString()) for d in kept]
    assert records.prepare(consumed, consume=True) == records.prepare(kept)
    assert all(d.HasField("inputs") for d in kept[:3])  # not consumed: untouched
    assert not any(d.HasField("inputs") for d in consumed)
