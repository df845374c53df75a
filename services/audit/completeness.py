"""Proving that a time-range export left nothing out: its boundary entries and its walk.

A range bundle (``range`` in the header, see ``services.audit.bundle_format``) holds
the entries whose record was logged in ``[start_us, end_us)``. The log stamps every
record with a ``logged_at`` that never decreases in leaf order, so such a range is a
run of consecutive leaf indexes. The header carries inclusion proofs of the entries
just outside the run (``before``, ``after``): :func:`parse_range` checks them, and
:class:`RangeWalk` checks that the bundle's entries fill every leaf index between
them, each logged inside the range and none earlier than the one before it. A range
with neither boundary reaches both ends of the tree: the bundle is the whole log.

Records logged before the log stamped ``logged_at`` count as logged at 0, before any
stamped one. Part of the offline verifier: it needs no store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError

from roost.audit.v1 import audit_service_pb2 as pb
from services.audit.bundle_format import RANGE_KEYS, BundleError, LoggedRange, is_int
from services.audit.checkpoint import Checkpoint
from services.audit.merkle import ProofError, leaf_hash, verify_inclusion
from services.audit.tlog_proof import TlogProof, TlogProofError

__all__ = ["Boundary", "RangeProof", "RangeWalk", "logged_at_us", "parse_range"]


def logged_at_us(decision: pb.Decision) -> int:
    """``decision.logged_at`` in microseconds since the epoch; 0 when unset (records
    logged before the log stamped it, which all precede the first one that has it)."""
    if not decision.HasField("logged_at"):
        return 0
    ts = decision.logged_at
    return ts.seconds * 1_000_000 + ts.nanos // 1000


@dataclass(frozen=True)
class Boundary:
    """An entry just outside a range, proven to be in the tree."""

    index: int
    logged_at_us: int


@dataclass(frozen=True)
class RangeProof:
    """A bundle's ``logged_at`` range and its verified boundary entries."""

    logged: LoggedRange
    before: Boundary | None
    after: Boundary | None
    tree_size: int

    @property
    def first(self) -> int:
        """The first leaf index of the range."""
        return 0 if self.before is None else self.before.index + 1

    @property
    def end(self) -> int:
        """One past the last leaf index of the range."""
        return self.tree_size if self.after is None else self.after.index

    def covers_log(self) -> bool:
        """True when the range reaches both ends of the tree."""
        return self.before is None and self.after is None


def parse_range(obj: object, cp: Checkpoint, note: str) -> RangeProof:
    """Checks a header's ``range`` against its checkpoint ``cp`` (signed ``note``)."""
    if not isinstance(obj, dict) or not {"before", "after"} <= obj.keys() <= RANGE_KEYS:
        raise BundleError("line 1: range must be an object with start_us, end_us, before and after")
    for name in ("start_us", "end_us"):
        if name in obj and not is_int(obj[name]):
            raise BundleError(f"line 1: range.{name} must be an integer")
    logged = LoggedRange(obj.get("start_us"), obj.get("end_us"))
    if logged.is_reversed():
        raise BundleError("line 1: range.end_us is before range.start_us")
    before = _boundary(obj.get("before"), "before", cp, note)
    after = _boundary(obj.get("after"), "after", cp, note)
    if before is not None and (logged.start_us is None or before.logged_at_us >= logged.start_us):
        raise BundleError(
            f"line 1: range.before (index {before.index}) is not logged before the range's start"
        )
    if after is not None and (logged.end_us is None or after.logged_at_us < logged.end_us):
        raise BundleError(
            f"line 1: range.after (index {after.index}) is not logged at or after the range's end"
        )
    if before is not None and after is not None and after.index <= before.index:
        raise BundleError("line 1: range.after does not come after range.before")
    return RangeProof(logged, before, after, cp.size)


def _boundary(text: Any, side: str, cp: Checkpoint, note: str) -> Boundary | None:
    """The boundary entry ``side`` of a range: its tlog-proof checked against ``cp``."""
    if text is None:
        return None
    where = f"line 1: range.{side}"
    try:
        proof = TlogProof.parse(text)
    except TlogProofError as exc:
        raise BundleError(f"{where}: malformed tlog-proof: {exc}") from None
    if proof.checkpoint != note:
        raise BundleError(f"{where}: the proof's checkpoint differs from the header's")
    if proof.extra is None:
        raise BundleError(f"{where}: the proof has no extra data (the entry's record)")
    try:
        verify_inclusion(
            leaf_hash(proof.extra), proof.index, cp.size, list(proof.hashes), cp.root_hash
        )
        decision = pb.Decision.FromString(proof.extra)
    except ProofError as exc:
        raise BundleError(f"{where} (index {proof.index}): inclusion proof fails: {exc}") from None
    except DecodeError:
        raise BundleError(f"{where} (index {proof.index}): the record is not a Decision") from None
    return Boundary(proof.index, logged_at_us(decision))


class RangeWalk:
    """Checks a range bundle's entries as they are read, then that none is missing.

    ``complete``: the bundle claims every entry of the range (no server-side filter),
    so leaf indexes must be consecutive from the range's first to its end.
    """

    def __init__(self, proof: RangeProof, *, complete: bool) -> None:
        self.proof = proof
        self._complete = complete
        # The next leaf index a complete bundle must list, and the latest logged_at.
        self._expected = proof.first
        self._last_logged_us = 0 if proof.before is None else proof.before.logged_at_us

    def check(self, index: int, decision: pb.Decision, where: str) -> None:
        """One entry (already proven included, in increasing index order)."""
        proof = self.proof
        if not proof.first <= index < proof.end:
            raise BundleError(
                f"{where}: index is outside the range's boundaries ({proof.first}..{proof.end - 1})"
            )
        logged_us = logged_at_us(decision)
        if not proof.logged.contains(logged_us):
            raise BundleError(f"{where}: logged_at is outside the bundle's range")
        if logged_us < self._last_logged_us:
            raise BundleError(
                f"{where}: logged_at is earlier than the previous entry's: the log's"
                " logged_at order is broken, so the range cannot be proven complete"
            )
        if self._complete and index != self._expected:
            raise BundleError(
                f"{where}: entries {self._expected}..{index - 1} of the range are missing:"
                " the export left them out"
            )
        self._expected = index + 1
        self._last_logged_us = logged_us

    def finish(self, n: int) -> None:
        """After the last entry (trailer on line ``n``): nothing missing at the end."""
        end = self.proof.end
        if not self._complete or self._expected == end:
            return
        bound = (
            f"the end of the tree ({end} entries)"
            if self.proof.after is None
            else f"the boundary entry {end} after the range"
        )
        raise BundleError(
            f"line {n}: entries {self._expected}..{end - 1} of the range are missing before"
            f" {bound}: the export was truncated"
        )
