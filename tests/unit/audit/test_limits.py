"""Every field of an appended decision is bounded: at its limit it is accepted, one past
it the request is refused naming the field (never echoing the value), and the largest
accepted entries still page and export within the byte bounds."""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from roost.audit.v1 import audit_service_pb2 as pb
from services.audit import limits, records
from services.audit.bundle_format import ExportFilters
from services.audit.checkpoint import NoteSigner
from services.audit.export import iter_bundle
from services.audit.store import AuditStore
from services.kit import timestamps
from services.kit.errors import InvalidArgument
from tests.support.audit_bundles import ORIGIN, sign, verify
from tests.support.audit_records import decision, largest_decision

Change = Callable[[pb.Decision], None]


def _set(field: str, value: object) -> Change:
    def change(d: pb.Decision) -> None:
        target: object = d
        *path, last = field.split(".")
        for name in path:
            target = getattr(target, name)
        setattr(target, last, value)

    return change


def _pad_record(d: pb.Decision) -> None:
    d.MergeFromString(b"\x9a\x06\x01p")  # one more byte of an unknown field, and then some


def _pad_inputs(d: pb.Decision) -> None:
    d.inputs.MergeFromString(b"\x9a\x06\x01p")


SECRET = "612.0 ppm in the nursery"
LONG = SECRET * 22  # 528 characters, over MAX_TEXT_CHARS
N = limits.MAX_TEXT_CHARS + 1


def _more_values(d: pb.Decision) -> None:
    d.output_values[:] = [0.5] * (limits.MAX_OUTPUT_VALUES + 1)


def _more_attributions(d: pb.Decision) -> None:
    for _ in range(limits.MAX_EXPLANATION + 1 - len(d.explanation)):
        d.explanation.add(feature="f", attribution=0.1)


def _attribution(k: int, **fields: object) -> Change:
    def change(d: pb.Decision) -> None:
        while len(d.explanation) <= k:
            d.explanation.add(feature="f", attribution=0.1)
        for name, value in fields.items():
            setattr(d.explanation[k], name, value)

    return change


# (field named in the error, change to a valid decision)
OVER: list[tuple[str, Change]] = [
    ("decision_id", _set("decision_id", "d" * (limits.MAX_DECISION_ID_CHARS + 1))),
    ("hub_id", _set("hub_id", LONG)),
    ("entity_id", _set("entity_id", "e" * (limits.MAX_ENTITY_ID_CHARS + 1))),
    ("model.name", _set("model.name", "n" * (limits.MAX_MODEL_NAME_CHARS + 1))),
    ("model.version", _set("model.version", "v" * (limits.MAX_MODEL_VERSION_CHARS + 1))),
    ("model.sha256", _set("model.sha256", "s" * (limits.MAX_MODEL_SHA256_CHARS + 1))),
    ("output_label", _set("output_label", LONG)),
    ("action", _set("action", "a" * (limits.MAX_ACTION_CHARS + 1))),
    ("policy.policy_id", _set("policy.policy_id", "p" * N)),
    ("policy.reason", _set("policy.reason", LONG)),
    ("policy.verdict", _set("policy.verdict", 99)),
    ("actor", _set("actor", 99)),
    ("confidence", _set("confidence", math.nan)),
    ("confidence", _set("confidence", 7.5)),
    ("confidence", _set("confidence", -0.25)),
    ("confidence", _set("confidence", math.inf)),
    ("output_values", _more_values),
    ("output_values[1]", lambda d: d.output_values.__setitem__(1, math.nan)),
    ("output_values[0]", lambda d: d.output_values.__setitem__(0, -math.inf)),
    ("explanation", _more_attributions),
    ("explanation[2].feature", _attribution(2, feature="f" * N)),
    ("explanation[5].attribution", _attribution(5, attribution=math.nan)),
    ("explanation[0].attribution", _attribution(0, attribution=math.inf)),
    (
        "decided_at",
        lambda d: setattr(d.decided_at, "seconds", timestamps.MAX_TIMESTAMP_SECONDS + 1),
    ),
    ("decided_at", lambda d: setattr(d.decided_at, "nanos", -1)),
    ("inputs.salt", lambda d: setattr(d.inputs, "salt", b"\x01" * 32)),
    ("inputs_digest", _set("inputs_digest", "ab" * 32)),
]
# One byte more than the largest entry: the serialized sizes.
OVERSIZED: list[tuple[str, Change]] = [
    ("decision", _pad_record),
    ("inputs", _pad_inputs),
]


def refusal(d: pb.Decision) -> str:
    with pytest.raises(InvalidArgument) as info:
        records.prepare([decision(0), d])
    return str(info.value)


@pytest.mark.parametrize(
    ("field", "change"), OVER, ids=[f"{i}-{f}" for i, (f, _) in enumerate(OVER)]
)
def test_one_past_each_limit_is_refused_naming_the_field(field: str, change: Change) -> None:
    d = decision(7)
    records.prepare([d])
    change(d)
    message = refusal(d)
    assert message.startswith(f"decisions[1].{field}: "), message
    problem = message.split(": ", 1)[1]
    for echoed in ("612", "nan", "inf", "7.5", "0.25", "99", "ddddd", "eeeee", "nnnnn"):
        assert not re.search(rf"\b{re.escape(echoed)}\b", problem), problem


@pytest.mark.parametrize(("field", "change"), OVERSIZED, ids=[f for f, _ in OVERSIZED])
def test_one_byte_past_the_largest_entry_is_refused(field: str, change: Change) -> None:
    d = largest_decision(7)
    (prepared,) = records.prepare([d])  # at every limit: accepted
    assert len(prepared.record) == limits.MAX_RECORD_BYTES
    assert prepared.inputs is not None
    assert len(prepared.inputs) == limits.MAX_INPUTS_BYTES
    change(d)
    assert refusal(d).startswith(f"decisions[1].{field}: at most ")


def test_values_at_the_edges_of_their_ranges_are_accepted() -> None:
    for confidence in (0.0, 1.0):
        d = decision(1, with_inputs=False)
        d.confidence = confidence
        d.output_values[:] = [-3.4e38, 0.0, 3.4e38]
        d.decided_at.seconds = timestamps.MIN_TIMESTAMP_SECONDS
        records.prepare([d])
    d.decided_at.seconds = timestamps.MAX_TIMESTAMP_SECONDS
    d.decided_at.nanos = 999_999_999
    records.prepare([d])


def test_the_largest_entries_page_and_export_within_the_byte_bounds(
    tmp_path: Path, signer: NoteSigner
) -> None:
    store = AuditStore.open(tmp_path / "audit.db")
    try:
        # 60 entries of ~80 KiB: a 1000-entry page of them would be ~10 MB.
        n = 60
        for start in range(0, n, 20):
            store.append([largest_decision(i) for i in range(start, start + 20)])
        store.append([decision(i) for i in range(1000, 1010)])
        entries, token, pages = [], "", 0
        while True:
            page, token = store.query(None, None, page_size=1000, page_token=token)
            assert sum(e.ByteSize() for e in page) <= limits.MAX_PAGE_BYTES
            entries += page
            pages += 1
            if not token:
                break
        assert [e.index for e in entries] == list(range(n + 10))
        assert pages > 1
        note = sign(store, signer)
        chunks = list(iter_bundle(store, note=note, origin=ORIGIN, filters=ExportFilters()))
        # Every chunk fits a gRPC message (4 MiB) with room to spare.
        assert max(len(c) for c in chunks) <= limits.EXPORT_CHUNK_BYTES + 200 * 1024
        lines = b"".join(chunks).splitlines(keepends=True)
        assert verify(lines, signer).entries == n + 10
    finally:
        store.close()


def test_export_caps_consistency_from_sizes() -> None:
    assert limits.check_consistency_from(range(limits.MAX_CONSISTENCY_FROM_SIZES))
    with pytest.raises(InvalidArgument, match=r"^consistency_from_sizes: 65 sizes, at most 64$"):
        limits.check_consistency_from(range(limits.MAX_CONSISTENCY_FROM_SIZES + 1))


def test_read_filters_and_timestamps_are_bounded() -> None:
    with pytest.raises(InvalidArgument, match=r"^entity_id: at most 255 characters$"):
        limits.check_filters(entity_id="e" * 256, model_name="", model_version="", action="")
    with pytest.raises(InvalidArgument, match=r"^page_token: at most"):
        limits.check_filters(
            entity_id="", model_name="", model_version="", action="", page_token="t" * 5000
        )
    ts = pb.Decision().decided_at
    ts.seconds = 2**62
    with pytest.raises(InvalidArgument, match=r"^start_time: not a valid timestamp"):
        limits.optional_timestamp_us(ts, True, "start_time")
    assert limits.optional_timestamp_us(ts, False, "start_time") is None


def _f32(bits: int) -> float:
    return float(struct.unpack("<f", struct.pack("<I", bits))[0])


# Every kind of non-finite float32: infinities, quiet and signalling NaNs, both signs,
# with low and high payloads.
NON_FINITE = [
    _f32(b)
    for b in (0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00001, 0x7F800001, 0x7FFFFFFF, 0xFFFFFFFF)
]
# Finite values whose bytes hold 0x7f or 0xff: the pre-filter's false alarms.
FINITE = [_f32(b) for b in (0x7F7FFFFF, 0xFF7FFFFF, 0x3F7FFF7F, 0x00FF7FFF, 0x80000001)] + [
    0.0,
    1.0,
]


@pytest.mark.parametrize("position", [0, 5, 63])
def test_any_non_finite_value_anywhere_is_found_and_finite_ones_pass(position: int) -> None:
    for value in NON_FINITE:
        d = decision(1)
        d.output_values[:] = [0.5] * 64
        d.output_values[position] = value
        assert refusal(d).startswith(f"decisions[1].output_values[{position}]: must be finite")
        d = decision(1)
        _attribution(position, attribution=value)(d)
        assert refusal(d).startswith(f"decisions[1].explanation[{position}].attribution: ")
    d = decision(1)
    d.output_values[:] = FINITE
    for k, value in enumerate(FINITE):
        _attribution(k, attribution=value)(d)
    records.prepare([d])
