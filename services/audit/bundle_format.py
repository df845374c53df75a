"""The export bundle format ``roost.audit.bundle/v1``: its constants, filters and errors.

A bundle lets an auditor check, with nothing but the hub's verifier key, that a set of
decisions is in the hub's transparency log exactly as exported, and that the log was
not rewritten since checkpoints the auditor already holds.

Encoding: JSON Lines, UTF-8, one JSON object per line, every line ending in ``\\n``.

1. Header::

       {"format": "roost.audit.bundle/v1",
        "origin": <checkpoint origin>, "tree_size": <n>, "root_hash": <base64>,
        "checkpoint": <the signed checkpoint note, verbatim>,
        "complete": <true when no filter was applied: entries are all of 0..n-1, or
                     all of the range>,
        "filters": {<only the filters applied: start_us, end_us (decided_at in
                    [start_us, end_us)), entity_id, model_name, model_version, action>},
        "range": {"start_us": <us>, "end_us": <us>,
                  "before": <tlog-proof> | null, "after": <tlog-proof> | null},
        "consistency": [{"from_size": <m>, "hashes": [<base64>, ...]}, ...],
        "inputs": "included" | "omitted",
        "exported_at": <RFC 3339 UTC time>}

   ``range`` (optional; absent for a whole-log export) is a range of the records'
   ``logged_at``, ``[start_us, end_us)`` (an absent bound is open), which the log
   assigns and never lets decrease in leaf order. ``before`` and ``after`` are the
   tlog-proofs (against the header's checkpoint, ``extra`` = the record) of the entries
   just before and just after the range, or null when the range reaches the start or
   the end of the tree. A complete range bundle lists every leaf index between them,
   so the verifier proves that no entry of the range was left out
   (``services.audit.completeness``). A filtered bundle (``complete`` false) proves
   membership only: the filters ran on the hub's unsigned query columns.

   ``consistency`` holds RFC 9162 consistency proofs from tree size ``m`` (checkpoints
   the auditor asked about) to ``tree_size``.

2. One line per exported entry, by increasing leaf index::

       {"proof": <C2SP tlog-proof text, see services.audit.tlog_proof>,
        "inputs": <base64 of the stored DecisionInputs bytes> | null,
        "inputs_redacted": <bool>}

   The proof's ``extra`` is the entry's record (the Decision without inputs,
   deterministically serialized: the leaf data) and its checkpoint is the header's
   note, byte for byte, so each proof also stands alone as a ``.tlog-proof`` file.
   ``inputs`` is null when the inputs were redacted, omitted from the export, or never
   stored; when present they must match the record's ``inputs_digest`` (salted or plain,
   see ``services.audit.salting``).

3. Trailer: ``{"end": true, "entries": <number of entry lines>}``, so that a truncated
   bundle is detected.

:func:`services.audit.export.iter_bundle` writes a bundle from the store;
:func:`services.audit.verify.verify_bundle` checks one offline (it needs no store; the
header's checks are in :mod:`services.audit.bundle_header`) and
:func:`services.audit.verify.iter_decisions` reads one without verifying.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from roost.audit.v1 import audit_service_pb2 as pb

__all__ = [
    "ENTRY_KEYS",
    "FORMAT",
    "HEADER_KEYS",
    "INPUTS_INCLUDED",
    "INPUTS_OMITTED",
    "OPTIONAL_HEADER_KEYS",
    "RANGE_KEYS",
    "TRAILER_KEYS",
    "BundleError",
    "ExportFilters",
    "LoggedRange",
    "is_int",
]

FORMAT: Final = "roost.audit.bundle/v1"
INPUTS_INCLUDED: Final = "included"
INPUTS_OMITTED: Final = "omitted"

HEADER_KEYS: Final = frozenset(
    {
        "format",
        "origin",
        "tree_size",
        "root_hash",
        "checkpoint",
        "complete",
        "filters",
        "consistency",
        "inputs",
        "exported_at",
    }
)
# Header fields a bundle may leave out (bundles written before they existed verify).
OPTIONAL_HEADER_KEYS: Final = frozenset({"range"})
RANGE_KEYS: Final = frozenset({"start_us", "end_us", "before", "after"})
ENTRY_KEYS: Final = frozenset({"proof", "inputs", "inputs_redacted"})
TRAILER_KEYS: Final = frozenset({"end", "entries"})
_TIME_FILTERS: Final = ("start_us", "end_us")
_TEXT_FILTERS: Final = ("entity_id", "model_name", "model_version", "action")


def is_int(value: object) -> bool:
    """A JSON integer (not a bool, not a float)."""
    return type(value) is int


@dataclass(frozen=True)
class ExportFilters:
    """Which entries to export (as QueryDecisions): ``start_us <= decided_at < end_us``
    (``None`` bounds are open) and equality on the non-empty text fields."""

    start_us: int | None = None
    end_us: int | None = None
    entity_id: str = ""
    model_name: str = ""
    model_version: str = ""
    action: str = ""

    def is_empty(self) -> bool:
        """True when nothing is filtered: the export is the whole log."""
        return not self.to_json()

    def to_json(self) -> dict[str, int | str]:
        """The filters that apply (set bounds, non-empty strings), as in the bundle header."""
        out: dict[str, int | str] = {}
        if self.start_us is not None:
            out["start_us"] = self.start_us
        if self.end_us is not None:
            out["end_us"] = self.end_us
        for name in _TEXT_FILTERS:
            value = getattr(self, name)
            if value:
                out[name] = value
        return out

    @classmethod
    def from_json(cls, obj: object) -> ExportFilters:
        """Parses a header's ``filters``; raises ValueError if malformed."""
        if not isinstance(obj, dict):
            raise ValueError("filters must be an object")
        unknown = set(obj) - {*_TIME_FILTERS, *_TEXT_FILTERS}
        if unknown:
            raise ValueError(f"unknown filters {sorted(unknown)}")
        for name in _TIME_FILTERS:
            if name in obj and not is_int(obj[name]):
                raise ValueError(f"filter {name} must be an integer")
        for name in _TEXT_FILTERS:
            if name in obj and (not isinstance(obj[name], str) or not obj[name]):
                raise ValueError(f"filter {name} must be a non-empty string")
        return cls(**obj)

    def matches(self, decision: pb.Decision) -> str | None:
        """``None`` if ``decision`` passes the filters, else the name of the first it fails."""
        if self.start_us is not None or self.end_us is not None:
            failed = self._time_failure(decision)
            if failed is not None:
                return failed
        return self._text_failure(decision)

    def _time_failure(self, decision: pb.Decision) -> str | None:
        """The time bound ``decision`` is outside of (``start_us`` first), or ``None``."""
        ts = decision.decided_at
        t_us = ts.seconds * 1_000_000 + ts.nanos // 1000
        if self.start_us is not None and t_us < self.start_us:
            return "start_us"
        if self.end_us is not None and t_us >= self.end_us:
            return "end_us"
        return None

    def _text_failure(self, decision: pb.Decision) -> str | None:
        """The first text filter ``decision`` fails (in ``_TEXT_FILTERS`` order), or ``None``."""
        if self.entity_id and decision.entity_id != self.entity_id:
            return "entity_id"
        if self.model_name and decision.model.name != self.model_name:
            return "model_name"
        if self.model_version and decision.model.version != self.model_version:
            return "model_version"
        if self.action and decision.action != self.action:
            return "action"
        return None


@dataclass(frozen=True)
class LoggedRange:
    """A range of ``logged_at``: ``start_us <= logged_at < end_us`` (``None`` is open)."""

    start_us: int | None = None
    end_us: int | None = None

    def to_json(self) -> dict[str, int]:
        """The set bounds, as in the header's ``range``."""
        out: dict[str, int] = {}
        if self.start_us is not None:
            out["start_us"] = self.start_us
        if self.end_us is not None:
            out["end_us"] = self.end_us
        return out

    def is_reversed(self) -> bool:
        """True when both bounds are set and the end is before the start."""
        return self.start_us is not None and self.end_us is not None and self.end_us < self.start_us

    def contains(self, logged_at_us: int) -> bool:
        return (self.start_us is None or logged_at_us >= self.start_us) and (
            self.end_us is None or logged_at_us < self.end_us
        )


class BundleError(ValueError):
    """A bundle that is malformed or does not verify; the message says where and why."""
