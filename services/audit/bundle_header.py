"""Line 1 of an export bundle, checked offline, and the auditor's earlier checkpoints.

:func:`parse_header` checks the header (fields, the signed checkpoint, filters,
completeness, the range's boundary entries, consistency proofs) and
:func:`check_previous` the checkpoints the auditor already holds against it. Part of
the offline verifier (:mod:`services.audit.verify`, which reads the entry lines);
like it, it needs no store. The format is described in ``services.audit.bundle_format``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from services.audit.bundle_format import (
    FORMAT,
    HEADER_KEYS,
    INPUTS_INCLUDED,
    INPUTS_OMITTED,
    OPTIONAL_HEADER_KEYS,
    BundleError,
    ExportFilters,
    is_int,
)
from services.audit.checkpoint import (
    Checkpoint,
    CheckpointError,
    NoteVerifier,
    verify_checkpoint,
)
from services.audit.completeness import RangeProof, parse_range
from services.audit.merkle import ProofError, verify_consistency
from services.kit.encoding import b64decode_strict, b64encode

__all__ = ["BundleHeader", "check_previous", "line_object", "parse_header", "strict_b64"]


@dataclass(frozen=True)
class BundleHeader:
    """A bundle's header, checked: its checkpoint verified with the pinned key."""

    checkpoint: Checkpoint
    note: str
    complete: bool
    filters: ExportFilters
    consistency: dict[int, list[bytes]]
    inputs_included: bool
    # The logged_at range and its boundary entries; None for a whole-log bundle.
    logged: RangeProof | None = None


def line_object(raw: str | bytes, n: int) -> dict[str, Any]:
    """Line ``n`` of a bundle: a JSON object."""
    try:
        obj = json.loads(raw)
    except ValueError:
        raise BundleError(f"line {n}: not valid JSON") from None
    if type(obj) is not dict:
        raise BundleError(f"line {n}: not a JSON object")
    return obj


def strict_b64(text: object, what: str) -> bytes:
    """Strict standard base64 (``services.kit.encoding``); BundleError naming ``what``."""
    if not isinstance(text, str):
        raise BundleError(f"{what} must be a base64 string")
    try:
        return b64decode_strict(text, what)
    except ValueError as exc:
        raise BundleError(str(exc)) from None


def parse_header(raw: str | bytes, verifier: NoteVerifier) -> BundleHeader:
    """Checks line 1, in the order of the checks below; raises BundleError."""
    obj = line_object(raw, 1)
    _check_header_fields(obj)
    note, cp = _header_checkpoint(obj, verifier)
    filters, complete = _header_scope(obj)
    if obj["inputs"] not in (INPUTS_INCLUDED, INPUTS_OMITTED):
        raise BundleError(f"line 1: inputs must be {INPUTS_INCLUDED!r} or {INPUTS_OMITTED!r}")
    _check_exported_at(obj["exported_at"])
    logged = None if "range" not in obj else parse_range(obj["range"], cp, note)
    return BundleHeader(
        cp,
        note,
        complete,
        filters,
        _parse_consistency(obj["consistency"], cp.size),
        obj["inputs"] == INPUTS_INCLUDED,
        logged,
    )


def _check_header_fields(obj: dict[str, Any]) -> None:
    """The format, then exactly the header's fields."""
    if obj.get("format") != FORMAT:
        raise BundleError(f"line 1: not a {FORMAT} header (format is {obj.get('format')!r})")
    missing = HEADER_KEYS - obj.keys()
    if missing:
        raise BundleError(f"line 1: header lacks {', '.join(sorted(missing))}")
    unknown = obj.keys() - HEADER_KEYS - OPTIONAL_HEADER_KEYS
    if unknown:
        raise BundleError(f"line 1: header has unknown fields {', '.join(sorted(unknown))}")


def _header_checkpoint(obj: dict[str, Any], verifier: NoteVerifier) -> tuple[str, Checkpoint]:
    """``(note, checkpoint)``: the signed note, verified, and the header fields it fixes."""
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
    return note, cp


def _header_scope(obj: dict[str, Any]) -> tuple[ExportFilters, bool]:
    """``(filters, complete)``: a bundle is complete exactly when it lists no filters."""
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
    return filters, complete


def _check_exported_at(exported_at: object) -> None:
    if not isinstance(exported_at, str) or not exported_at.endswith("Z"):
        raise BundleError("line 1: exported_at must be an RFC 3339 UTC time")
    try:
        dt.datetime.fromisoformat(exported_at)
    except ValueError:
        raise BundleError("line 1: exported_at must be an RFC 3339 UTC time") from None


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
        decoded = [strict_b64(h, f"{where}.hashes[{j}]") for j, h in enumerate(hashes)]
        if any(len(h) != 32 for h in decoded):
            raise BundleError(f"{where}: hashes must be 32 bytes each")
        out[m] = decoded
    return out


def check_previous(
    header: BundleHeader, verifier: NoteVerifier, previous: Sequence[str]
) -> tuple[int, ...]:
    """The tree sizes of ``previous`` (signed notes), each shown consistent with the
    header's checkpoint by the header's proofs; raises BundleError."""
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
                f"{what} has tree size {m}, larger than the bundle's {cp.size}. Either the"
                f" bundle was exported before you got that checkpoint (export again, with"
                f" --previous, and verify the new bundle), or the log was rolled back or"
                f" forked below tree size {m} since it signed that checkpoint: a serious"
                f" finding. A fresh export whose tree size is still below {m} means the latter"
            )
        proof = header.consistency.get(m)
        if proof is None:
            if 0 < m < cp.size:
                raise BundleError(
                    f"{what} (tree size {m}): the bundle has no consistency proof from tree"
                    f" size {m}; export again with --previous and that checkpoint's note"
                    " (roost audit export --previous NOTE)"
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
