"""The offline verifier of export bundles (``roost.audit.bundle/v1``).

It needs only the bundle's text and the hub's verifier key: no store, no database, no
server. :func:`verify_bundle` checks a bundle (signature once, every inclusion proof,
records, inputs digests, filters, completeness by recomputing the root or, for a
time range, between its proven boundary entries (``services.audit.completeness``),
consistency with earlier checkpoints), optionally picks the verified entries that
match the auditor's own filters, and raises :class:`BundleError` naming the line, the leaf
index and the failure; :func:`iter_decisions` reads one without verifying. The format
is described in ``services.audit.bundle_format``; the header (line 1) and the earlier
checkpoints are checked by ``services.audit.bundle_header``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError

from roost.audit.v1 import audit_service_pb2 as pb
from services.audit.bundle_format import (
    ENTRY_KEYS,
    FORMAT,
    TRAILER_KEYS,
    BundleError,
    ExportFilters,
    LoggedRange,
    is_int,
)
from services.audit.bundle_header import (
    BundleHeader,
    check_previous,
    line_object,
    parse_header,
    strict_b64,
)
from services.audit.checkpoint import Checkpoint, CheckpointError, NoteVerifier
from services.audit.compact_range import CompactRange
from services.audit.completeness import RangeWalk
from services.audit.cosignature import CosignatureVerifier, require_cosignatures
from services.audit.merkle import NODE_PREFIX, leaf_hash
from services.audit.salting import InputsError, stored_digest
from services.audit.tlog_proof import TlogProof, TlogProofError

__all__ = ["BundleError", "BundleReport", "iter_decisions", "verify_bundle"]


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
    # Witnesses (of those the auditor pinned) that cosigned the checkpoint.
    witnessed_by: tuple[str, ...] = ()
    # The logged_at range of a range bundle (None: the bundle is not a range export).
    logged: LoggedRange | None = None
    # The bundle holds every entry of the tree (a whole-log bundle, or a range
    # reaching both ends). ``complete`` without it: every entry of the range.
    covers_log: bool = False
    # Verified entries matching the auditor's own filters (None: no filter given).
    matched: int | None = None


def _numbered(lines: Iterable[str | bytes]) -> Iterator[tuple[int, str | bytes]]:
    """``(line number, line)``; every line must end with a newline."""
    if isinstance(lines, str | bytes):
        raise TypeError("pass the bundle's lines (e.g. text.splitlines(keepends=True))")
    for n, raw in enumerate(lines, start=1):
        if not raw or raw[-1] not in ("\n", 10):
            raise BundleError(f"line {n}: does not end with a newline: the bundle is truncated")
        yield n, raw


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
    witnesses: Sequence[CosignatureVerifier] = (),
    min_witnesses: int = 0,
    select: ExportFilters | None = None,
    on_match: Callable[[int, pb.Decision], None] | None = None,
) -> BundleReport:
    """Verifies a bundle read as lines (each ending in ``\\n``, e.g. a file opened "rb").

    ``verifier`` is the hub's pinned key: the checkpoint's origin must be its name.
    ``previous_checkpoints`` are signed notes of the same log the auditor holds; each
    must be consistent with the bundle's checkpoint. ``on_entry`` is called after each
    verified entry (progress). ``select`` filters the verified entries on their signed
    records (the auditor's own filter, over what was verified): ``on_match`` gets each
    match's index and decision, and the report counts them. ``witnesses`` are witness
    keys the auditor pinned: at least ``min_witnesses`` of them must have cosigned the
    bundle's checkpoint. Raises BundleError on the first problem, naming the line and
    leaf index.
    """
    numbered = _numbered(lines)
    first = next(numbered, None)
    if first is None:
        raise BundleError("the bundle is empty: no header line")
    header = parse_header(first[1], verifier)
    try:
        witnessed = require_cosignatures(header.note, witnesses, min_witnesses)
    except CheckpointError as exc:
        raise BundleError(f"line 1: {exc}") from None
    consistency_checked = check_previous(header, verifier, previous_checkpoints)
    walk = _Walk.start(header, select, on_match)
    _read_entries(numbered, walk, on_entry)
    after = next(numbered, None)
    if after is not None:
        raise BundleError(f"line {after[0]}: data after the trailer")
    if walk.ranged is not None:
        walk.ranged.finish(walk.line)
    if walk.compact is not None:
        _check_complete(walk.compact, walk.count, walk.line, header.checkpoint)
    return dataclasses.replace(walk.report(consistency_checked), witnessed_by=witnessed)


@dataclass
class _Walk:
    """The entries verified so far, while reading a bundle's entry lines."""

    header: BundleHeader
    # The header's filters; None when there are none.
    filters: ExportFilters | None
    # A whole-log bundle's tree, rebuilt from its entries; None for any other bundle.
    compact: CompactRange | None
    # A range bundle's boundary and gap checks; None for a whole-log bundle.
    ranged: RangeWalk | None
    # The auditor's own filter, and where its matches go.
    select: ExportFilters | None = None
    on_match: Callable[[int, pb.Decision], None] | None = None
    matched: int = 0
    # The number of the last line read.
    line: int = 1
    # The previous entry's leaf index (-1 before the first).
    prev: int = -1
    count: int = 0
    redacted: int = 0
    first_index: int | None = None

    @classmethod
    def start(
        cls,
        header: BundleHeader,
        select: ExportFilters | None,
        on_match: Callable[[int, pb.Decision], None] | None,
    ) -> _Walk:
        filters = None if header.filters.is_empty() else header.filters
        logged = header.logged
        whole = header.complete and (logged is None or logged.covers_log())
        ranged = None if logged is None else RangeWalk(logged, complete=header.complete)
        compact = CompactRange() if whole else None
        return cls(header, filters, compact, ranged, select, on_match)

    def pick(self, index: int, decision: pb.Decision) -> None:
        """Passes a verified entry through the auditor's own filter."""
        if self.select is not None and self.select.matches(decision) is None:
            self.matched += 1
            if self.on_match is not None:
                self.on_match(index, decision)

    def add(self, index: int, leaf: bytes, redacted: bool) -> None:
        """Counts a verified entry."""
        if self.compact is not None:
            self.compact.append(leaf)
        if self.first_index is None:
            self.first_index = index
        if redacted:
            self.redacted += 1
        self.prev = index
        self.count += 1

    def report(self, consistency_checked: tuple[int, ...]) -> BundleReport:
        cp = self.header.checkpoint
        logged = self.header.logged
        return BundleReport(
            origin=cp.origin,
            tree_size=cp.size,
            root_hash=cp.root_hash,
            entries=self.count,
            redacted=self.redacted,
            complete=self.header.complete,
            consistency_checked=consistency_checked,
            first_index=self.first_index,
            last_index=None if self.first_index is None else self.prev,
            logged=None if logged is None else logged.logged,
            covers_log=self.compact is not None,
            matched=None if self.select is None else self.matched,
        )


def _read_entries(
    numbered: Iterator[tuple[int, str | bytes]],
    walk: _Walk,
    on_entry: Callable[[], None] | None,
) -> None:
    """Verifies the entry lines, up to and including the trailer."""
    for n, raw in numbered:
        walk.line = n
        obj = line_object(raw, n)
        if "proof" not in obj:
            if "end" in obj:
                _check_trailer(obj, n, walk.count)
                return
            raise BundleError(f"line {n}: neither an entry nor the trailer")
        _verify_entry(obj, n, walk)
        if on_entry is not None:
            on_entry()
    raise BundleError(
        f"the bundle ends after line {walk.line} without the trailer line: it is truncated"
    )


def _verify_entry(obj: dict[str, Any], n: int, walk: _Walk) -> None:
    """Entry line ``n``: its fields, its position, its inclusion proof, its record, its
    inputs, checked in that order; then counted."""
    if obj.keys() != ENTRY_KEYS:
        raise BundleError(
            f"line {n}: an entry must have exactly the fields proof, inputs, inputs_redacted"
        )
    proof = _parse_proof(obj["proof"], n)
    where = f"line {n} (index {proof.index})"
    _check_position(proof, where, walk)
    record, leaf = _check_inclusion(proof, where, walk.header.checkpoint)
    decision = _decode_record(record, where, walk.filters)
    if walk.ranged is not None:
        walk.ranged.check(proof.index, decision, where)
    redacted = _check_inputs(obj, decision, where, walk.header.inputs_included)
    walk.add(proof.index, leaf, redacted)
    walk.pick(proof.index, decision)


def _parse_proof(text: Any, n: int) -> TlogProof:
    try:
        return TlogProof.parse(text)
    except TlogProofError as exc:
        raise BundleError(f"line {n}: malformed tlog-proof: {exc}") from None


def _check_position(proof: TlogProof, where: str, walk: _Walk) -> None:
    """The proof is against the header's checkpoint, its index in the tree and in order."""
    index, size = proof.index, walk.header.checkpoint.size
    if proof.checkpoint != walk.header.note:
        raise BundleError(
            f"{where}: the proof's checkpoint differs from the header's:"
            " the proof was made against another checkpoint"
        )
    if index >= size:
        raise BundleError(f"{where}: index is not below the checkpoint's tree size {size}")
    if index <= walk.prev:
        raise BundleError(
            f"{where}: index is not greater than the previous entry's ({walk.prev}):"
            " entries are out of order or repeated"
        )
    if walk.compact is not None and index != walk.count:
        raise BundleError(
            f"{where}: a complete bundle has index {walk.count} here: entries are missing"
            " or out of order"
        )


def _check_inclusion(proof: TlogProof, where: str, cp: Checkpoint) -> tuple[bytes, bytes]:
    """``(record, leaf hash)`` of an entry whose inclusion proof leads to ``cp``'s root."""
    record = proof.extra
    if record is None:
        raise BundleError(f"{where}: the proof has no extra data (the entry's record)")
    leaf = leaf_hash(record)
    got = _inclusion_root(leaf, proof.index, cp.size, proof.hashes)
    if got is None:
        raise BundleError(
            f"{where}: inclusion proof has the wrong number of hashes ({len(proof.hashes)})"
            f" for tree size {cp.size}"
        )
    if got != cp.root_hash:
        raise BundleError(
            f"{where}: inclusion proof does not lead to the checkpoint root:"
            " the entry was altered or is not in the log"
        )
    return record, leaf


def _decode_record(record: bytes, where: str, filters: ExportFilters | None) -> pb.Decision:
    """The entry's Decision: without inputs, and matching the header's filters."""
    try:
        decision = pb.Decision.FromString(record)
    except DecodeError:
        raise BundleError(f"{where}: the record is not a valid Decision") from None
    if decision.HasField("inputs"):
        raise BundleError(f"{where}: the record carries inputs (records exclude them)")
    if filters is not None:
        failed = filters.matches(decision)
        if failed is not None:
            raise BundleError(f"{where}: the entry does not match the header's {failed} filter")
    return decision


def _check_inputs(
    obj: dict[str, Any], decision: pb.Decision, where: str, inputs_included: bool
) -> bool:
    """Checks the entry's inputs against its record; returns its ``inputs_redacted``."""
    inputs_b64 = obj["inputs"]
    is_redacted: bool = obj["inputs_redacted"]
    if type(is_redacted) is not bool:
        raise BundleError(f"{where}: inputs_redacted must be true or false")
    if inputs_b64 is not None:
        if is_redacted:
            raise BundleError(f"{where}: inputs are present on an entry marked redacted")
        if not inputs_included:
            raise BundleError(f"{where}: inputs are present but the header says omitted")
        data = strict_b64(inputs_b64, f"{where}: inputs")
        try:
            digest = stored_digest(data)
        except InputsError as exc:
            raise BundleError(f"{where}: {exc}") from None
        if digest != decision.inputs_digest:
            raise BundleError(
                f"{where}: inputs do not match the record's inputs_digest:"
                " the stored inputs were altered"
            )
    return is_redacted


def _check_complete(compact: CompactRange, count: int, n: int, cp: Checkpoint) -> None:
    """A complete bundle (trailer on line ``n``) has every entry of the tree, and they
    rebuild its root."""
    size = cp.size
    if count != size:
        raise BundleError(
            f"line {n}: the complete bundle has {count} entries but the tree has {size}:"
            f" entries {count}..{size - 1} are missing"
        )
    if not hmac.compare_digest(compact.root(), cp.root_hash):
        raise BundleError(
            f"line {n}: the root recomputed from all {size} entries differs from the"
            " checkpoint root"
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
    if line_object(first[1], 1).get("format") != FORMAT:
        raise BundleError(f"line 1: not a {FORMAT} header")
    for n, raw in numbered:
        obj = line_object(raw, n)
        if "proof" not in obj:
            if "end" in obj:
                return
            raise BundleError(f"line {n}: neither an entry nor the trailer")
        proof = _parse_proof(obj["proof"], n)
        where = f"line {n} (index {proof.index})"
        if proof.extra is None:
            raise BundleError(f"{where}: the proof has no extra data (the entry's record)")
        decision = pb.Decision()
        try:
            decision.MergeFromString(proof.extra)
            inputs = obj.get("inputs")
            if inputs is not None:
                decision.inputs.MergeFromString(strict_b64(inputs, f"{where}: inputs"))
        except DecodeError:
            raise BundleError(f"{where}: the record or inputs are not valid protobuf") from None
        yield proof.index, decision, obj.get("inputs_redacted") is True
