"""Writing an export bundle (``roost.audit.bundle/v1``, see ``services.audit.bundle_format``)
from the audit store, pinned to a signed checkpoint.

This is the hub's side: it reads entries and proofs from an
:class:`~services.audit.store.AuditStore`. The auditor's side, which needs only the
bundle and the verifier key, is ``services.audit.verify``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator, Sequence
from typing import Any

from services.audit.bundle_format import (
    FORMAT,
    INPUTS_INCLUDED,
    INPUTS_OMITTED,
    ExportFilters,
    LoggedRange,
)
from services.audit.checkpoint import Checkpoint, CheckpointError
from services.audit.limits import EXPORT_CHUNK_BYTES
from services.audit.query import MAX_PAGE_SIZE
from services.audit.store import AuditStore
from services.audit.tlog_proof import TlogProof
from services.kit.encoding import b64encode
from services.kit.errors import FailedPrecondition, InvalidArgument

__all__ = ["iter_bundle"]


def _note_checkpoint(note: str) -> Checkpoint:
    """The checkpoint in a signed note, without checking signatures (the hub made it)."""
    if not isinstance(note, str):
        raise InvalidArgument("note: must be a signed checkpoint note")
    # Checkpoint lines are never empty: the first empty line ends the note text.
    split = note.find("\n\n")
    if split < 0:
        raise InvalidArgument("note: not a signed note (no empty line before the signatures)")
    try:
        return Checkpoint.parse(note[: split + 1])
    except CheckpointError as exc:
        raise InvalidArgument(f"note: {exc}") from None


def _line(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":")) + "\n"


def iter_bundle(
    store: AuditStore,
    *,
    note: str,
    origin: str,
    filters: ExportFilters,
    logged: LoggedRange | None = None,
    consistency_from: Sequence[int] = (),
    omit_inputs: bool = False,
    page_size: int = MAX_PAGE_SIZE,
) -> Iterator[bytes]:
    """The bundle of the entries matching ``filters`` in the tree that ``note`` signs.

    With ``logged``, only entries logged in that range, and the header carries the
    proofs of the entries just outside it (see ``services.audit.bundle_format``).

    ``note`` is a signed checkpoint (its tree size and root pin the export) whose origin
    must be ``origin``. Yields chunks of whole lines: the header, the entry lines in
    chunks of about ``EXPORT_CHUNK_BYTES`` (never more than one page of ``page_size``
    entries), then the trailer. Arguments are checked right away
    (InvalidArgument); the store is only used by ``next()``, which raises
    FailedPrecondition if the store's root at the note's tree size differs from the
    note's, and InvalidArgument for a ``consistency_from`` size above it.
    Synchronous: iterate on the store's own thread.
    """
    cp = _note_checkpoint(note)
    if cp.origin != origin:
        raise InvalidArgument(f"note: checkpoint origin {cp.origin!r} is not {origin!r}")
    if logged is not None and logged.is_reversed():
        raise InvalidArgument("logged_until: must not be before logged_from")
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise InvalidArgument(f"page_size: must be between 1 and {MAX_PAGE_SIZE}")
    sizes: list[int] = []
    for m in consistency_from:
        if m < 0 or m > cp.size:
            raise InvalidArgument(
                f"consistency_from_sizes: {m} is not between 0 and the checkpoint's"
                f" tree size {cp.size}"
            )
        if m not in sizes:
            sizes.append(m)
    return _generate(
        store,
        note=note,
        cp=cp,
        filters=filters,
        logged=logged,
        sizes=sorted(sizes),
        omit_inputs=omit_inputs,
        page_size=page_size,
    )


def _generate(
    store: AuditStore,
    *,
    note: str,
    cp: Checkpoint,
    filters: ExportFilters,
    logged: LoggedRange | None,
    sizes: list[int],
    omit_inputs: bool,
    page_size: int,
) -> Iterator[bytes]:
    size = cp.size
    current = store.tree_size()
    if size > current:
        raise FailedPrecondition(
            f"checkpoint tree size {size} is larger than the log's tree size {current}"
        )
    if store.root(size) != cp.root_hash:
        raise FailedPrecondition(
            f"the log's root at tree size {size} differs from the checkpoint's:"
            " the log was altered after the checkpoint was signed"
        )
    first, end = 0, size
    header: dict[str, Any] = {
        "format": FORMAT,
        "origin": cp.origin,
        "tree_size": size,
        "root_hash": b64encode(cp.root_hash),
        "checkpoint": note,
        "complete": filters.is_empty(),
        "filters": filters.to_json(),
        "consistency": [
            {"from_size": m, "hashes": [b64encode(h) for h in store.consistency_proof(m, size)]}
            for m in sizes
        ],
        "inputs": INPUTS_OMITTED if omit_inputs else INPUTS_INCLUDED,
        "exported_at": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")[:-6] + "Z",
    }
    if logged is not None:
        first, end = store.logged_range(logged.start_us, logged.end_us, size)
        header["range"] = {
            **logged.to_json(),
            "before": _boundary(store, note, first - 1, size),
            "after": _boundary(store, note, end, size),
        }
    yield _line(header).encode("utf-8")
    count = 0
    token = ""
    prev_index, prev_leaf = -1, b""
    prev_hashes: tuple[bytes, ...] = ()
    while first < end:
        entries, token = store.query(
            filters.start_us,
            filters.end_us,
            entity_id=filters.entity_id,
            model_name=filters.model_name,
            model_version=filters.model_version,
            action=filters.action,
            page_size=page_size,
            page_token=token,
            from_index=first,
            below_index=end,
        )
        lines: list[str] = []
        chunk_chars = 0
        for entry in entries:
            index = int(entry.index)
            hashes: tuple[bytes, ...]
            if index & 1 and index - 1 == prev_index:
                # Leaves 2k and 2k+1 are siblings: their paths differ only in the first hash.
                hashes = (prev_leaf, *prev_hashes[1:])
            else:
                hashes = tuple(store.inclusion_proof(index, size))
            prev_index, prev_leaf, prev_hashes = index, entry.leaf_hash, hashes
            proof = TlogProof(index, hashes, note, entry.record)
            inputs: str | None = None
            if not omit_inputs and not entry.inputs_redacted and entry.decision.HasField("inputs"):
                inputs = b64encode(entry.decision.inputs.SerializeToString(deterministic=True))
            redacted = entry.inputs_redacted
            line = _line({"proof": proof.marshal(), "inputs": inputs, "inputs_redacted": redacted})
            lines.append(line)
            count += 1
            # The lines are ASCII (JSON escapes the rest): characters are bytes.
            chunk_chars += len(line)
            if chunk_chars >= EXPORT_CHUNK_BYTES:
                yield "".join(lines).encode("utf-8")
                lines, chunk_chars = [], 0
        if lines:
            yield "".join(lines).encode("utf-8")
        if not token:
            break
    yield _line({"end": True, "entries": count}).encode("utf-8")


def _boundary(store: AuditStore, note: str, index: int, size: int) -> str | None:
    """The tlog-proof of leaf ``index`` (a range's boundary), or None outside the tree."""
    if not 0 <= index < size:
        return None
    proof = TlogProof(
        index, tuple(store.inclusion_proof(index, size)), note, store.record_at(index)
    )
    return proof.marshal()
