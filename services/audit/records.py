"""Pure functions over decision records: validation and leaf data.

The *record* of a decision is the decision without its ``inputs`` (which live in a
redactable side store), deterministically serialized, with the ``logged_at`` the log
assigns when it writes the entry (:func:`with_logged_at`). Its leaf hash is
``SHA-256(0x00 || record)`` as in RFC 9162 section 2.1.1
(:func:`services.audit.merkle.leaf_hash`). Every field is bounded
(``services.audit.limits``) and the inputs are committed to with a fresh salt
(``services.audit.salting``).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from roost.audit.v1 import audit_service_pb2 as pb
from services.audit import limits
from services.audit.limits import (
    ACTORS,
    MAX_ACTION_CHARS,
    MAX_DECISION_ID_CHARS,
    MAX_ENTITY_ID_CHARS,
    MAX_MODEL_NAME_CHARS,
    MAX_MODEL_SHA256_CHARS,
    MAX_MODEL_VERSION_CHARS,
)
from services.audit.limits import FieldError as _Invalid
from services.audit.merkle import LEAF_PREFIX
from services.audit.salting import SALT_BYTES, fresh_salts, salt_inputs
from services.kit.errors import InvalidArgument

_logger = logging.getLogger(__name__)

_HEX_DIGITS = frozenset("0123456789abcdef")
# Actors any caller may log (the others fail ``_check_actor``).
_CALLER_ACTORS = ACTORS - {pb.ACTOR_UNSPECIFIED, pb.ACTOR_ADMIN}
_new_tuple = tuple.__new__


@dataclass(slots=True)
class Appended:
    """The outcome of appending one decision (``AppendResult`` without the protobuf cost;
    the servicer builds the message on the event loop, off the writer thread)."""

    decision_id: str
    index: int
    leaf_hash: bytes
    already_logged: bool = False


class PreparedRecord(NamedTuple):
    """A validated decision, ready to be written: everything the store persists.

    ``record`` lacks ``logged_at`` (the store appends it with :func:`with_logged_at`
    when it assigns the leaf index, and hashes the whole into the leaf hash then).
    """

    decision_id: str
    decided_at_us: int
    entity_id: str
    model_name: str
    model_version: str
    action: str
    record: bytes
    # The inputs to store (deterministically serialized, with their salt), or None.
    inputs: bytes | None


def record_bytes(decision: pb.Decision) -> bytes:
    """The leaf data: ``decision`` without ``inputs``, deterministically serialized."""
    if not decision.HasField("inputs"):
        return decision.SerializeToString(deterministic=True)
    stripped = pb.Decision()
    stripped.CopyFrom(decision)
    stripped.ClearField("inputs")
    return stripped.SerializeToString(deterministic=True)


def logged_at_field(logged_at_us: int) -> bytes:
    """The encoded ``logged_at`` field of a Decision, to append to its record.

    ``logged_at`` is the Decision's highest field number, so ``record +
    logged_at_field(t)`` is the deterministic serialization of the record with
    ``logged_at`` set (:func:`with_logged_at`).
    """
    seconds, micros = divmod(logged_at_us, 1_000_000)
    field = pb.Decision()
    field.logged_at.seconds = seconds
    field.logged_at.nanos = micros * 1000
    return field.SerializeToString(deterministic=True)


def with_logged_at(record: bytes, logged_at_us: int) -> bytes:
    """``record`` (a Decision without ``logged_at``) with ``logged_at`` set."""
    return record + logged_at_field(logged_at_us)


def validate_decision(d: pb.Decision, where: str) -> None:
    """Raises InvalidArgument naming the first bad field, e.g. ``decisions[3].decision_id``.

    ``where`` prefixes field names (``""`` for none). With inputs present,
    ``inputs_digest`` must be empty: the store fills it in.
    """
    try:
        _prepare_one(d, salt=fresh_salts(1))
    except _Invalid as exc:
        prefix = f"{where}." if where else ""
        raise InvalidArgument(f"{prefix}{exc.field}: {exc.problem}") from None


def prepare(
    decisions: Sequence[pb.Decision],
    field: str = "decisions",
    *,
    admin: bool = False,
    consume: bool = False,
) -> list[PreparedRecord]:
    """Validates every decision (nothing is returned if any is invalid) and derives the rows.

    Errors name the field as ``{field}[i].name``. The caller's messages are not
    modified; the salted ``inputs_digest`` is filled in on a copy. Only the audit
    service itself (``admin``) may write ``ACTOR_ADMIN`` entries. With ``consume`` the
    decisions' ``inputs`` are cleared in place (faster; for messages used only once,
    such as a gRPC request's).
    """
    prepared: list[PreparedRecord] = []
    salts = fresh_salts(len(decisions))
    for i, d in enumerate(decisions):
        salt = salts[i * SALT_BYTES : (i + 1) * SALT_BYTES]
        try:
            prepared.append(_prepare_one(d, admin, consume, salt=salt))
        except _Invalid as exc:
            raise InvalidArgument(f"{field}[{i}].{exc.field}: {exc.problem}") from None
    return prepared


def _prepare_one(
    d: pb.Decision, admin: bool = False, consume: bool = False, *, salt: bytes
) -> PreparedRecord:
    """Validates ``d`` and derives its row (hot path: each field is read once).

    ``admin`` allows ``ACTOR_ADMIN`` entries (the log's own records, see erasure.py);
    ``consume`` lets it clear ``d.inputs`` in place (the message is not used afterwards);
    ``salt`` is the fresh salt of its inputs. Fields are checked in this order:
    decision_id, decided_at, logged_at (must be unset: the log assigns it), entity_id,
    actor, model, the other bounded fields (``limits.check_decision_fields``),
    inputs_digest, inputs, then what the serialized record bounds (``limits.check_record``:
    sizes, free texts, attributions).
    """
    decision_id = d.decision_id
    if not decision_id:
        raise _Invalid("decision_id", "required")
    if len(decision_id) > MAX_DECISION_ID_CHARS:
        raise _Invalid("decision_id", f"at most {MAX_DECISION_ID_CHARS} characters")
    if not d.HasField("decided_at"):
        raise _Invalid("decided_at", "required")
    decided_at_us = limits.timestamp_us(d.decided_at, "decided_at")
    if d.HasField("logged_at"):
        raise _Invalid("logged_at", "assigned by the audit log; leave it unset")
    entity_id = d.entity_id
    if not entity_id:
        raise _Invalid("entity_id", "required")
    if len(entity_id) > MAX_ENTITY_ID_CHARS:
        raise _Invalid("entity_id", f"at most {MAX_ENTITY_ID_CHARS} characters")
    actor = d.actor
    if actor not in _CALLER_ACTORS:  # the common case checked without a call
        _check_actor(actor, admin)
    model_name, model_version = _model_name_version(d, admin)
    action = d.action
    if len(action) > MAX_ACTION_CHARS:
        raise _Invalid("action", f"at most {MAX_ACTION_CHARS} characters")
    limits.check_decision_fields(d)
    record, inputs = _record_and_inputs(d, consume, salt)
    limits.check_record(d, record, inputs)
    # tuple.__new__ directly: the NamedTuple's own __new__ is one more Python call.
    return _new_tuple(
        PreparedRecord,
        (decision_id, decided_at_us, entity_id, model_name, model_version, action, record, inputs),
    )


def _check_actor(actor: int, admin: bool) -> None:
    if actor not in ACTORS:
        raise _Invalid("actor", "not an Actor value")
    if actor == pb.ACTOR_UNSPECIFIED:
        raise _Invalid("actor", "must not be ACTOR_UNSPECIFIED")
    if actor == pb.ACTOR_ADMIN and not admin:
        raise _Invalid("actor", "ACTOR_ADMIN entries are written by the audit service itself")


def _model_name_version(d: pb.Decision, admin: bool) -> tuple[str, str]:
    """``d.model``'s name and version, all three of its fields required unless
    ``admin`` and unset (log-maintenance entries may concern no model at all)."""
    model = d.model
    model_name, model_version, sha256 = model.name, model.version, model.sha256
    if not (admin and not d.HasField("model")):
        if not model_name:
            raise _Invalid("model.name", "required")
        if not model_version:
            raise _Invalid("model.version", "required")
        if not sha256:
            raise _Invalid("model.sha256", "required")
    if len(model_name) > MAX_MODEL_NAME_CHARS:
        raise _Invalid("model.name", f"at most {MAX_MODEL_NAME_CHARS} characters")
    if len(model_version) > MAX_MODEL_VERSION_CHARS:
        raise _Invalid("model.version", f"at most {MAX_MODEL_VERSION_CHARS} characters")
    if len(sha256) > MAX_MODEL_SHA256_CHARS:
        raise _Invalid("model.sha256", f"at most {MAX_MODEL_SHA256_CHARS} characters")
    return model_name, model_version


def _record_and_inputs(d: pb.Decision, consume: bool, salt: bytes) -> tuple[bytes, bytes | None]:
    """``(record, inputs)``: the leaf data (with the salted ``inputs_digest`` filled in
    when the inputs are present) and the inputs to store (with their salt), or None."""
    digest = d.inputs_digest
    if not d.HasField("inputs"):
        if digest and not (len(digest) == 64 and _HEX_DIGITS.issuperset(digest)):
            raise _Invalid("inputs_digest", "must be 64 lowercase hex characters")
        return d.SerializeToString(deterministic=True), None
    if digest:
        raise _Invalid(
            "inputs_digest",
            "must be empty when inputs are sent (the audit service commits to them"
            " with a fresh salt)",
        )
    inputs = d.inputs
    if inputs.salt:
        raise _Invalid("inputs.salt", "must be empty (the audit service draws the salt)")
    stored, digest = salt_inputs(inputs.SerializeToString(deterministic=True), salt)
    # ``consume``: strip the caller's own message (a gRPC request) instead of a copy.
    stripped = d
    if not consume:
        stripped = pb.Decision()
        stripped.CopyFrom(d)
    stripped.ClearField("inputs")
    stripped.inputs_digest = digest
    return stripped.SerializeToString(deterministic=True), stored


def assign_rows(
    flat: Sequence[PreparedRecord],
    known: dict[str, tuple[int, bytes, bytes]],
    next_idx: int,
    times: tuple[int, int],
) -> tuple[list[Appended], list[tuple[Any, ...]], list[tuple[int, bytes]]]:
    """Gives each new decision_id the next leaf index; returns results and rows to insert.

    ``times`` is ``(appended_at_us, logged_at_us)``: the wall clock, and the logged_at
    stamped into every new record (its leaf hash covers it). ``known`` maps already
    logged ids to (index, leaf hash, record); it is extended in place so that an id
    repeated later in ``flat`` resolves to its first occurrence.
    """
    appended_at_us, logged_at_us = times
    suffix = logged_at_field(logged_at_us)
    results: list[Appended] = []
    entry_rows: list[tuple[Any, ...]] = []
    input_rows: list[tuple[int, bytes]] = []
    # Hot loop (once per appended record): bound methods in locals, one hash per record.
    sha256 = hashlib.sha256
    add_result, add_entry, add_input = results.append, entry_rows.append, input_rows.append
    for rec in flat:
        decision_id, decided_at_us, entity_id, model_name, model_version, action, partial = rec[:7]
        existing = known.get(decision_id)
        if existing is not None:
            idx, digest, logged = existing
            # The logged record is the retried one plus its logged_at (or, before v5, equal).
            # A retry with inputs has a fresh salt, so only a retry without can be compared.
            if rec.inputs is None and not logged.startswith(partial):
                _logger.warning("audit append: retry of index %d with different content", idx)
            add_result(Appended(decision_id, idx, digest, True))
            continue
        idx = next_idx
        next_idx += 1
        record = partial + suffix
        digest = sha256(LEAF_PREFIX + record).digest()  # merkle.leaf_hash, inlined
        known[decision_id] = (idx, digest, record)
        # Column order of ENTRY_COLUMNS.
        add_entry(
            (
                idx,
                decision_id,
                decided_at_us,
                entity_id,
                model_name,
                model_version,
                action,
                record,
                digest,
                appended_at_us,
                logged_at_us,
            )
        )
        if rec.inputs is not None:
            add_input((idx, rec.inputs))
        add_result(Appended(decision_id, idx, digest))
    return results, entry_rows, input_rows
