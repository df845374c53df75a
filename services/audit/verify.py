"""The offline verifier of export bundles (``roost.audit.bundle/v1``).

It needs only the bundle's text and the hub's verifier key: no store, no database, no
server. :func:`verify_bundle` checks a bundle (signature once, every inclusion proof,
records, inputs digests, filters, completeness by recomputing the root, consistency
with earlier checkpoints) and raises :class:`BundleError` naming the line, the leaf
index and the failure; :func:`iter_decisions` reads one without verifying. The format
is described in ``services.audit.bundle_format``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError

from roost.audit.v1 import audit_service_pb2 as pb
from services.audit.bundle_format import (
    ENTRY_KEYS,
    FORMAT,
    HEADER_KEYS,
    INPUTS_INCLUDED,
    INPUTS_OMITTED,
    TRAILER_KEYS,
    ExportFilters,
    is_int,
)
from services.audit.checkpoint import (
    Checkpoint,
    CheckpointError,
    NoteVerifier,
    verify_checkpoint,
)
from services.audit.compact_range import CompactRange
from services.audit.merkle import NODE_PREFIX, ProofError, leaf_hash, verify_consistency
from services.audit.tlog_proof import TlogProof, TlogProofError
from services.kit.encoding import b64decode_strict, b64encode

__all__ = ["BundleError", "BundleReport", "iter_decisions", "verify_bundle"]


class BundleError(ValueError):
    """A bundle that is malformed or does not verify; the message says where and why."""


@dataclass(frozen=True)
class BundleReport:
    """What a verified bundle proved."""

    origin: str
    tree_size: int
    root_hash: bytes
    entries: int
    # Entries whose inputs were redacted.
    redacted: int
    complete: bool
    # Tree sizes of the previous checkpoints shown consistent with this one.
    consistency_checked: tuple[int, ...]
    first_index: int | None
    last_index: int | None


@dataclass(frozen=True)
class _Header:
    checkpoint: Checkpoint
    note: str
    complete: bool
    filters: ExportFilters
    consistency: dict[int, list[bytes]]
    inputs_included: bool


def _numbered(lines: Iterable[str | bytes]) -> Iterator[tuple[int, str | bytes]]:
    """``(line number, line)``; every line must end with a newline."""
    if isinstance(lines, str | bytes):
        raise TypeError("pass the bundle's lines (e.g. text.splitlines(keepends=True))")
    for n, raw in enumerate(lines, start=1):
        if not raw or raw[-1] not in ("\n", 10):
            raise BundleError(f"line {n}: does not end with a newline: the bundle is truncated")
        yield n, raw


def _object(raw: str | bytes, n: int) -> dict[str, Any]:
    try:
        obj = json.loads(raw)
    except ValueError:
        raise BundleError(f"line {n}: not valid JSON") from None
    if type(obj) is not dict:
        raise BundleError(f"line {n}: not a JSON object")
    return obj


def _strict_b64(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise BundleError(f"{what} must be a base64 string")
    try:
        return b64decode_strict(text, what)
    except ValueError as exc:
        raise BundleError(str(exc)) from None


def _parse_header(raw: str | bytes, verifier: NoteVerifier) -> _Header:
    obj = _object(raw, 1)
    if obj.get("format") != FORMAT:
        raise BundleError(f"line 1: not a {FORMAT} header (format is {obj.get('format')!r})")
    missing = HEADER_KEYS - obj.keys()
    if missing:
        raise BundleError(f"line 1: header lacks {', '.join(sorted(missing))}")
    unknown = obj.keys() - HEADER_KEYS
    if unknown:
        raise BundleError(f"line 1: header has unknown fields {', '.join(sorted(unknown))}")
    note = obj["checkpoint"]
    if not isinstance(note, str):
        raise BundleError("line 1: checkpoint must be the signed note text")
    try:
        cp = verify_checkpoint(verifier, note, verifier.name)
    except CheckpointError as exc:
        raise BundleError(
            f"line 1: the checkpoint does not verify with key {verifier.name}: {exc}"
        ) from None
    if obj["origin"] != cp.origin:
        raise BundleError(
            f"line 1: header origin {obj['origin']!r} differs from the checkpoint's {cp.origin!r}"
        )
    if not is_int(obj["tree_size"]) or obj["tree_size"] != cp.size:
        raise BundleError(
            f"line 1: header tree_size {obj['tree_size']!r} differs from the checkpoint's {cp.size}"
        )
    if obj["root_hash"] != b64encode(cp.root_hash):
        raise BundleError("line 1: header root_hash differs from the checkpoint's root")
    try:
        filters = ExportFilters.from_json(obj["filters"])
    except (ValueError, TypeError) as exc:
        raise BundleError(f"line 1: {exc}") from None
    complete = obj["complete"]
    if type(complete) is not bool:
        raise BundleError("line 1: complete must be true or false")
    if complete and not filters.is_empty():
        raise BundleError("line 1: header says complete but lists filters")
    if not complete and filters.is_empty():
        raise BundleError("line 1: header says not complete but lists no filters")
    if obj["inputs"] not in (INPUTS_INCLUDED, INPUTS_OMITTED):
        raise BundleError(f"line 1: inputs must be {INPUTS_INCLUDED!r} or {INPUTS_OMITTED!r}")
    exported_at = obj["exported_at"]
    if not isinstance(exported_at, str) or not exported_at.endswith("Z"):
        raise BundleError("line 1: exported_at must be an RFC 3339 UTC time")
    try:
        dt.datetime.fromisoformat(exported_at)
    except ValueError:
        raise BundleError("line 1: exported_at must be an RFC 3339 UTC time") from None
    return _Header(
        cp,
        note,
        complete,
        filters,
        _parse_consistency(obj["consistency"], cp.size),
        obj["inputs"] == INPUTS_INCLUDED,
    )


def _parse_consistency(items: object, size: int) -> dict[int, list[bytes]]:
    if not isinstance(items, list):
        raise BundleError("line 1: consistency must be a list")
    out: dict[int, list[bytes]] = {}
    for i, item in enumerate(items):
        where = f"line 1: consistency[{i}]"
        if not isinstance(item, dict) or item.keys() != {"from_size", "hashes"}:
            raise BundleError(f"{where} must be an object with from_size and hashes")
        m, hashes = item["from_size"], item["hashes"]
        if not is_int(m) or not 0 <= m <= size:
            raise BundleError(f"{where}: from_size must be an integer between 0 and {size}")
        if m in out:
            raise BundleError(f"{where}: a second proof from tree size {m}")
        if not isinstance(hashes, list) or len(hashes) > 2 * 64:
            raise BundleError(f"{where}: hashes must be a list of base64 hashes")
        decoded = [_strict_b64(h, f"{where}.hashes[{j}]") for j, h in enumerate(hashes)]
        if any(len(h) != 32 for h in decoded):
            raise BundleError(f"{where}: hashes must be 32 bytes each")
        out[m] = decoded
    return out


def _check_previous(
    header: _Header, verifier: NoteVerifier, previous: Sequence[str]
) -> tuple[int, ...]:
    cp = header.checkpoint
    checked: list[int] = []
    for i, note in enumerate(previous, start=1):
        what = f"previous checkpoint #{i}"
        try:
            old = verify_checkpoint(verifier, note, verifier.name)
        except CheckpointError as exc:
            raise BundleError(
                f"{what} does not verify with key {verifier.name} (is it from another log?): {exc}"
            ) from None
        m = old.size
        if m > cp.size:
            raise BundleError(
                f"{what} has tree size {m}, larger than the bundle's {cp.size}:"
                " the bundle is older than that checkpoint; export again"
            )
        proof = header.consistency.get(m)
        if proof is None:
            if 0 < m < cp.size:
                raise BundleError(
                    f"{what} (tree size {m}): the bundle has no consistency proof from tree"
                    f" size {m}; export again with consistency_from_sizes {m}"
                )
            proof = []
        try:
            verify_consistency(m, cp.size, proof, old.root_hash, cp.root_hash)
        except ProofError as exc:
            raise BundleError(
                f"line 1: {what} (tree size {m}) is not consistent with the bundle's checkpoint"
                f" (tree size {cp.size}): the log was rewritten since then ({exc})"
            ) from None
        checked.append(m)
    return tuple(checked)


def _inclusion_root(leaf: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes | None:
    """The root an RFC 9162 inclusion proof leads to, or None if its length is wrong.

    ``verify_inclusion`` without its argument checks (hashes are already 32 bytes).
    """
    sha256 = hashlib.sha256
    prefix = NODE_PREFIX
    fn, sn = index, size - 1
    r = leaf
    for p in proof:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            r = sha256(prefix + p + r).digest()
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = sha256(prefix + r + p).digest()
        fn >>= 1
        sn >>= 1
    return r if sn == 0 else None


def verify_bundle(
    lines: Iterable[str | bytes],
    verifier: NoteVerifier,
    *,
    previous_checkpoints: Sequence[str] = (),
    on_entry: Callable[[], None] | None = None,
) -> BundleReport:
    """Verifies a bundle read as lines (each ending in ``\\n``, e.g. a file opened "rb").

    ``verifier`` is the hub's pinned key: the checkpoint's origin must be its name.
    ``previous_checkpoints`` are signed notes of the same log the auditor holds; each
    must be consistent with the bundle's checkpoint. ``on_entry`` is called after each
    verified entry (progress). Raises BundleError on the first problem, naming the line
    and leaf index.
    """
    numbered = _numbered(lines)
    first = next(numbered, None)
    if first is None:
        raise BundleError("the bundle is empty: no header line")
    header = _parse_header(first[1], verifier)
    consistency_checked = _check_previous(header, verifier, previous_checkpoints)

    cp = header.checkpoint
    note, size, root = header.note, cp.size, cp.root_hash
    filters = None if header.filters.is_empty() else header.filters
    inputs_included = header.inputs_included
    compact = CompactRange() if header.complete else None
    sha256 = hashlib.sha256
    decode_decision = pb.Decision.FromString
    prev = -1
    count = 0
    redacted = 0
    first_index: int | None = None
    n = 1
    trailer_seen = False
    for n, raw in numbered:
        obj = _object(raw, n)
        if "proof" not in obj:
            if "end" in obj:
                _check_trailer(obj, n, count)
                trailer_seen = True
                break
            raise BundleError(f"line {n}: neither an entry nor the trailer")
        if obj.keys() != ENTRY_KEYS:
            raise BundleError(
                f"line {n}: an entry must have exactly the fields proof, inputs, inputs_redacted"
            )
        try:
            proof = TlogProof.parse(obj["proof"])
        except TlogProofError as exc:
            raise BundleError(f"line {n}: malformed tlog-proof: {exc}") from None
        index = proof.index
        where = f"line {n} (index {index})"
        if proof.checkpoint != note:
            raise BundleError(
                f"{where}: the proof's checkpoint differs from the header's:"
                " the proof was made against another checkpoint"
            )
        if index >= size:
            raise BundleError(f"{where}: index is not below the checkpoint's tree size {size}")
        if index <= prev:
            raise BundleError(
                f"{where}: index is not greater than the previous entry's ({prev}):"
                " entries are out of order or repeated"
            )
        if compact is not None and index != count:
            raise BundleError(
                f"{where}: a complete bundle has index {count} here: entries are missing"
                " or out of order"
            )
        record = proof.extra
        if record is None:
            raise BundleError(f"{where}: the proof has no extra data (the entry's record)")
        leaf = leaf_hash(record)
        got = _inclusion_root(leaf, index, size, proof.hashes)
        if got is None:
            raise BundleError(
                f"{where}: inclusion proof has the wrong number of hashes ({len(proof.hashes)})"
                f" for tree size {size}"
            )
        if got != root:
            raise BundleError(
                f"{where}: inclusion proof does not lead to the checkpoint root:"
                " the entry was altered or is not in the log"
            )
        try:
            decision = decode_decision(record)
        except DecodeError:
            raise BundleError(f"{where}: the record is not a valid Decision") from None
        if decision.HasField("inputs"):
            raise BundleError(f"{where}: the record carries inputs (records exclude them)")
        if filters is not None:
            failed = filters.matches(decision)
            if failed is not None:
                raise BundleError(f"{where}: the entry does not match the header's {failed} filter")
        inputs_b64 = obj["inputs"]
        is_redacted = obj["inputs_redacted"]
        if type(is_redacted) is not bool:
            raise BundleError(f"{where}: inputs_redacted must be true or false")
        if is_redacted:
            redacted += 1
        if inputs_b64 is not None:
            if is_redacted:
                raise BundleError(f"{where}: inputs are present on an entry marked redacted")
            if not inputs_included:
                raise BundleError(f"{where}: inputs are present but the header says omitted")
            data = _strict_b64(inputs_b64, f"{where}: inputs")
            if sha256(data).hexdigest() != decision.inputs_digest:
                raise BundleError(
                    f"{where}: inputs do not match the record's inputs_digest:"
                    " the stored inputs were altered"
                )
        if compact is not None:
            compact.append(leaf)
        if first_index is None:
            first_index = index
        prev = index
        count += 1
        if on_entry is not None:
            on_entry()
    if not trailer_seen:
        raise BundleError(
            f"the bundle ends after line {n} without the trailer line: it is truncated"
        )
    after = next(numbered, None)
    if after is not None:
        raise BundleError(f"line {after[0]}: data after the trailer")
    if compact is not None:
        if count != size:
            raise BundleError(
                f"line {n}: the complete bundle has {count} entries but the tree has {size}:"
                f" entries {count}..{size - 1} are missing"
            )
        if not hmac.compare_digest(compact.root(), root):
            raise BundleError(
                f"line {n}: the root recomputed from all {size} entries differs from the"
                " checkpoint root"
            )
    return BundleReport(
        origin=cp.origin,
        tree_size=size,
        root_hash=root,
        entries=count,
        redacted=redacted,
        complete=header.complete,
        consistency_checked=consistency_checked,
        first_index=first_index,
        last_index=None if first_index is None else prev,
    )


def _check_trailer(obj: dict[str, Any], n: int, count: int) -> None:
    if obj.keys() != TRAILER_KEYS or obj["end"] is not True or not is_int(obj["entries"]):
        raise BundleError(f'line {n}: the trailer must be {{"end": true, "entries": <n>}}')
    if obj["entries"] != count:
        raise BundleError(
            f"line {n}: the trailer counts {obj['entries']} entries but the bundle has"
            f" {count}: entry lines were removed or added"
        )


def iter_decisions(lines: Iterable[str | bytes]) -> Iterator[tuple[int, pb.Decision, bool]]:
    """``(index, decision, inputs_redacted)`` of each entry, WITHOUT verifying anything.

    For display only (run :func:`verify_bundle` first). The decision carries its inputs
    when the bundle has them. Stops at the trailer; raises BundleError if a line is
    unreadable.
    """
    numbered = _numbered(lines)
    first = next(numbered, None)
    if first is None:
        raise BundleError("the bundle is empty: no header line")
    if _object(first[1], 1).get("format") != FORMAT:
        raise BundleError(f"line 1: not a {FORMAT} header")
    for n, raw in numbered:
        obj = _object(raw, n)
        if "proof" not in obj:
            if "end" in obj:
                return
            raise BundleError(f"line {n}: neither an entry nor the trailer")
        try:
            proof = TlogProof.parse(obj["proof"])
        except TlogProofError as exc:
            raise BundleError(f"line {n}: malformed tlog-proof: {exc}") from None
        where = f"line {n} (index {proof.index})"
        if proof.extra is None:
            raise BundleError(f"{where}: the proof has no extra data (the entry's record)")
        decision = pb.Decision()
        try:
            decision.MergeFromString(proof.extra)
            inputs = obj.get("inputs")
            if inputs is not None:
                decision.inputs.MergeFromString(_strict_b64(inputs, f"{where}: inputs"))
        except DecodeError:
            raise BundleError(f"{where}: the record or inputs are not valid protobuf") from None
        yield proof.index, decision, obj.get("inputs_redacted") is True
