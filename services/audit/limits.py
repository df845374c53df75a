"""The bounds of everything a caller puts into the audit log, and their checks.

The log is append-only: an entry accepted once must export forever. So every field
of a ``Decision`` has a size limit and a value range (the table is in docs/audit.md,
section "Limits"), and so do the read requests' filters and timestamps. The limits
also bound every export line and every query entry, which is what lets pages be cut
by bytes (``MAX_PAGE_BYTES``, ``EXPORT_CHUNK_BYTES``) and still always hold the
largest entry.

Checks raise :class:`FieldError` naming the field and the rule, never the value; the
callers add the position (``decisions[3].``) and turn it into ``InvalidArgument``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Final

from google.protobuf.timestamp_pb2 import Timestamp

from roost.audit.v1 import audit_service_pb2 as pb
from services.kit import timestamps
from services.kit.errors import InvalidArgument

# Characters of the identifying text fields of a Decision (and of the filters on them).
MAX_DECISION_ID_CHARS: Final = 128
MAX_ENTITY_ID_CHARS: Final = 255
MAX_MODEL_NAME_CHARS: Final = 128
MAX_MODEL_VERSION_CHARS: Final = 64
MAX_MODEL_SHA256_CHARS: Final = 128
MAX_ACTION_CHARS: Final = 128
# Characters of each free text: hub_id, output_label, policy.policy_id, policy.reason,
# explanation[].feature. A record of at most this many bytes cannot hold a longer one,
# which is what keeps their check off the hot path (see check_record).
MAX_TEXT_CHARS: Final = 512
# Repeated fields (more would make the record longer than MAX_TEXT_CHARS bytes, so
# they too are counted off the hot path).
MAX_OUTPUT_VALUES: Final = 128
MAX_EXPLANATION: Final = 256
# Serialized sizes: the record (the leaf data: the Decision without its inputs, unknown
# fields included) and the stored inputs (a DecisionInputs, salt included).
MAX_RECORD_BYTES: Final = 16 * 1024
MAX_INPUTS_BYTES: Final = 64 * 1024
# A whole AppendDecisions request (the count is ServiceConfig.max_append_batch).
MAX_APPEND_REQUEST_BYTES: Final = 4 * 1024 * 1024
# Tree sizes an export may prove consistency from.
MAX_CONSISTENCY_FROM_SIZES: Final = 64
# A query page stops before it would exceed this many bytes of entries; an export
# chunk is sent once it holds at least this many bytes of lines. One entry is at most
# about 2 x MAX_RECORD_BYTES + MAX_INPUTS_BYTES (a LogEntry) or 4/3 of that plus its
# proof (an export line), so both always fit within gRPC's default 4 MiB message.
MAX_PAGE_BYTES: Final = 2 * 1024 * 1024
EXPORT_CHUNK_BYTES: Final = 1024 * 1024
# A page token is a short opaque string (services.kit.paging).
MAX_PAGE_TOKEN_CHARS: Final = 1024

ACTORS: Final = frozenset(pb.Actor.values())
_VERDICTS: Final = frozenset(pb.PolicyVerdict.values())


class FieldError(Exception):
    """One bad field: ``field`` is its path within the message, ``problem`` the rule."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(field)
        self.field = field
        self.problem = problem


def check_text(value: str, field: str, max_chars: int) -> None:
    if len(value) > max_chars:
        raise FieldError(field, f"at most {max_chars} characters")


def timestamp_us(ts: Timestamp, field: str) -> int:
    """``ts`` in microseconds since the epoch; FieldError unless it is a valid Timestamp
    (the range is ``services.kit.timestamps``', which every service checks against)."""
    if not timestamps.is_valid(ts):
        raise FieldError(field, timestamps.PROBLEM)
    return ts.seconds * 1_000_000 + ts.nanos // 1000


def check_decision_fields(d: pb.Decision) -> None:
    """The value ranges of ``d`` that its serialized size does not bound (ids, timestamp,
    actor, model and action are checked by ``records`` on its way, first).

    Hot path (every appended decision): two reads and comparisons.
    """
    if not 0.0 <= d.confidence <= 1.0:  # False for NaN too
        raise FieldError("confidence", "must be a finite number in [0, 1]")
    if d.policy.verdict not in _VERDICTS:
        raise FieldError("policy.verdict", "not a PolicyVerdict value")


def check_record(d: pb.Decision, record: bytes, inputs: bytes | None) -> None:
    """The bounds that ``d``'s serialized ``record`` (and stored ``inputs``) decide: the
    free texts, the repeated fields' counts and the finiteness of the output values and
    attributions, which are read only when the record could break them, then the sizes.

    A text over MAX_TEXT_CHARS, or more values or attributions than allowed, makes the
    record longer than MAX_TEXT_CHARS bytes (a value takes 4 bytes, an attribution at
    least 2), and a non-finite float leaves a mark in its bytes (``_may_hold_non_finite``).
    A short record without such a mark, the common case, is done in well under a
    microsecond.
    """
    size = len(record)
    if size > MAX_TEXT_CHARS or _may_hold_non_finite(record):
        _check_in_full(d)  # first, so that an oversized field is named
    if size > MAX_RECORD_BYTES:
        raise FieldError(
            "decision", f"at most {MAX_RECORD_BYTES} bytes serialized without its inputs"
        )
    if inputs is not None and len(inputs) > MAX_INPUTS_BYTES:
        raise FieldError("inputs", f"at most {MAX_INPUTS_BYTES} bytes serialized")


def _may_hold_non_finite(record: bytes) -> bool:
    """False only if no float32 in ``record`` can be non-finite.

    A non-finite float32 has all eight exponent bits set: written little-endian (as
    protobuf does), its last byte is 0x7f or 0xff and the byte before has its high bit
    set. Without such a pair nothing in the record is NaN or infinite.
    """
    for marker in b"\x7f\xff":
        at = record.find(marker, 1)
        while at > 0:
            if record[at - 1] & 0x80:
                return True
            at = record.find(marker, at + 1)
    return False


def _check_in_full(d: pb.Decision) -> None:
    values = d.output_values
    if len(values) > MAX_OUTPUT_VALUES:
        raise FieldError("output_values", f"at most {MAX_OUTPUT_VALUES} values")
    for i, value in enumerate(values):
        if not math.isfinite(value):
            raise FieldError(f"output_values[{i}]", "must be finite")
    explanation = d.explanation
    if len(explanation) > MAX_EXPLANATION:
        raise FieldError("explanation", f"at most {MAX_EXPLANATION} attributions")
    policy = d.policy
    for text, field in (
        (d.hub_id, "hub_id"),
        (d.output_label, "output_label"),
        (policy.policy_id, "policy.policy_id"),
        (policy.reason, "policy.reason"),
    ):
        check_text(text, field, MAX_TEXT_CHARS)
    for i, attribution in enumerate(explanation):
        check_text(attribution.feature, f"explanation[{i}].feature", MAX_TEXT_CHARS)
        if not math.isfinite(attribution.attribution):
            raise FieldError(f"explanation[{i}].attribution", "must be finite")


def check_filters(
    *,
    entity_id: str,
    model_name: str,
    model_version: str,
    action: str,
    page_token: str = "",
) -> None:
    """InvalidArgument for a read filter longer than any logged value could be."""
    try:
        check_text(entity_id, "entity_id", MAX_ENTITY_ID_CHARS)
        check_text(model_name, "model_name", MAX_MODEL_NAME_CHARS)
        check_text(model_version, "model_version", MAX_MODEL_VERSION_CHARS)
        check_text(action, "action", MAX_ACTION_CHARS)
        check_text(page_token, "page_token", MAX_PAGE_TOKEN_CHARS)
    except FieldError as exc:
        raise InvalidArgument(f"{exc.field}: {exc.problem}") from None


def optional_timestamp_us(ts: Timestamp, present: bool, field: str) -> int | None:
    """A request's optional time bound in microseconds; InvalidArgument when invalid."""
    return timestamps.timestamp_us(ts, field) if present else None


def check_decision_id(decision_id: str) -> None:
    """InvalidArgument unless ``decision_id`` (a lookup key) could be a logged id."""
    if not decision_id:
        raise InvalidArgument("decision_id: required")
    if len(decision_id) > MAX_DECISION_ID_CHARS:
        raise InvalidArgument(f"decision_id: at most {MAX_DECISION_ID_CHARS} characters")


def check_consistency_from(sizes: Iterable[int]) -> list[int]:
    """The tree sizes of an export's consistency proofs, at most MAX_CONSISTENCY_FROM_SIZES."""
    listed = list(sizes)
    if len(listed) > MAX_CONSISTENCY_FROM_SIZES:
        raise InvalidArgument(
            f"consistency_from_sizes: {len(listed)} sizes, at most {MAX_CONSISTENCY_FROM_SIZES}"
        )
    return listed
