"""Reading the audit log: one entry by decision id, filtered pages of entries, and the
leaf indexes of a ``logged_at`` range.

Pages are in leaf order (or reversed with ``newest_first``); their tokens are the
kit's opaque, filter-bound page tokens (``services.kit.paging``) holding the last
leaf index returned and, for a time-bounded query, the last leaf index to scan. A page
holds at most ``page_size`` entries and ends early rather than exceed
``limits.MAX_PAGE_BYTES`` (it always holds at least one entry, and every entry fits).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any, Final

from roost.audit.v1 import audit_service_pb2 as pb
from services.audit.limits import MAX_PAGE_BYTES
from services.kit import paging
from services.kit.errors import InvalidArgument, NotFound

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "get_entry",
    "logged_index_range",
    "query_entries",
    "record_at",
]

DEFAULT_PAGE_SIZE: Final = 100
MAX_PAGE_SIZE: Final = 1000

_SELECT_ENTRY: Final = (
    "SELECT e.idx, e.record, e.leaf_hash, e.appended_at_us, i.data, i.redacted_at_us"
    " FROM entries e LEFT JOIN inputs i ON i.idx = e.idx"
)
# A page token's cursor: the last leaf index returned, and the last one to scan (a
# time-bounded query fixes it on its first page; None when unbounded).
_CURSOR: Final = ("index", "last")

Filters = list[tuple[str, Any]]


def get_entry(conn: sqlite3.Connection, decision_id: str) -> pb.LogEntry:
    """The logged entry of ``decision_id``; NotFound if it is not in the log."""
    if not decision_id:
        raise InvalidArgument("decision_id: required")
    row = conn.execute(_SELECT_ENTRY + " WHERE e.decision_id = ?", (decision_id,)).fetchone()
    if row is None:
        raise NotFound("decision_id: no such decision in the audit log")
    return _entry(row)


def record_at(conn: sqlite3.Connection, index: int) -> bytes:
    """The record (leaf data) of leaf ``index``; NotFound if there is no such leaf."""
    row = conn.execute("SELECT record FROM entries WHERE idx = ?", (index,)).fetchone()
    if row is None:
        raise NotFound(f"index: no leaf {index} in the audit log")
    return bytes(row[0])


def logged_index_range(
    conn: sqlite3.Connection, start_us: int | None, end_us: int | None, size: int
) -> tuple[int, int]:
    """``[first, end)``: the leaf indexes below ``size`` whose ``logged_at`` lies in
    ``[start_us, end_us)`` (``None`` bounds are open).

    ``logged_at`` never decreases in leaf order, so each bound is a binary search over
    the primary key (no index on ``logged_at_us``, which every append would pay for).
    """
    first = 0 if start_us is None else _first_logged_at(conn, start_us, size)
    end = size if end_us is None else _first_logged_at(conn, end_us, size)
    return first, max(first, end)


def _first_logged_at(conn: sqlite3.Connection, t_us: int, size: int) -> int:
    """The first leaf index below ``size`` logged at or after ``t_us``, else ``size``."""
    lo, hi = 0, size
    while lo < hi:
        mid = (lo + hi) // 2
        (logged,) = conn.execute(
            "SELECT logged_at_us FROM entries WHERE idx = ?", (mid,)
        ).fetchone()
        if logged < t_us:
            lo = mid + 1
        else:
            hi = mid
    return lo


def query_entries(
    conn: sqlite3.Connection,
    start_us: int | None,
    end_us: int | None,
    *,
    entity_id: str = "",
    model_name: str = "",
    model_version: str = "",
    action: str = "",
    page_size: int = 0,
    page_token: str = "",
    from_index: int | None = None,
    below_index: int | None = None,
    newest_first: bool = False,
) -> tuple[list[pb.LogEntry], str]:
    """See :meth:`services.audit.store.AuditStore.query`."""
    if page_size < 0 or page_size > MAX_PAGE_SIZE:
        raise InvalidArgument(f"page_size: must be between 0 and {MAX_PAGE_SIZE}")
    limit = page_size or DEFAULT_PAGE_SIZE
    time_filters: Filters = [("decided_at_us >= ?", start_us), ("decided_at_us < ?", end_us)]
    filters: Filters = [
        *time_filters,
        ("entity_id = ?", entity_id or None),
        ("model_name = ?", model_name or None),
        ("model_version = ?", model_version or None),
        ("action = ?", action or None),
        ("idx >= ?", from_index),
        ("idx < ?", below_index),
    ]
    # A token is only valid for the filters (and the direction) it was issued for.
    query = [value for _, value in filters] + [newest_first]
    cursor = paging.decode_token(page_token, _CURSOR, query)
    if cursor and cursor["index"] is None:
        raise InvalidArgument("page_token: invalid")
    if newest_first:
        return _query_backwards(conn, filters, limit, cursor.get("index"), query)
    if cursor:
        after, last = cursor["index"], cursor["last"]
    else:
        after, last = -1, None
        if start_us is not None or end_us is not None:
            # The decided_at index narrows the scan of the idx-ordered entries.
            bounds = _select(
                conn, "SELECT MIN(idx), MAX(idx) FROM entries", [*time_filters, *filters[-2:]]
            )
            first, last = bounds.fetchone()
            if first is None:
                return [], ""
            after = first - 1
    filters += [("idx > ?", after), ("idx <= ?", last)]
    rows = _select(
        conn, _SELECT_ENTRY, filters, "ORDER BY e.idx LIMIT ?", limit + 1, alias="e."
    ).fetchall()
    entries, more = _page(rows, limit)
    next_token = ""
    if more:
        next_token = paging.encode_token({"index": int(entries[-1].index), "last": last}, query)
    return entries, next_token


def _query_backwards(
    conn: sqlite3.Connection,
    filters: Filters,
    limit: int,
    before: int | None,
    query: Sequence[object],
) -> tuple[list[pb.LogEntry], str]:
    """``query_entries`` with ``newest_first``: pages walk down the leaf indexes."""
    rows = _select(
        conn,
        _SELECT_ENTRY,
        [*filters, ("idx < ?", before)],
        "ORDER BY e.idx DESC LIMIT ?",
        limit + 1,
        alias="e.",
    ).fetchall()
    entries, more = _page(rows, limit)
    next_token = ""
    if more:
        next_token = paging.encode_token({"index": int(entries[-1].index), "last": None}, query)
    return entries, next_token


def _page(rows: Sequence[tuple[Any, ...]], limit: int) -> tuple[list[pb.LogEntry], bool]:
    """The entries of up to ``limit`` rows within MAX_PAGE_BYTES (at least one), and
    whether rows are left over for a next page."""
    entries: list[pb.LogEntry] = []
    total = 0
    for row in rows[:limit]:
        entry = _entry(row)
        total += entry.ByteSize()
        if entries and total > MAX_PAGE_BYTES:
            return entries, True
        entries.append(entry)
    return entries, len(rows) > limit


def _select(
    conn: sqlite3.Connection,
    select: str,
    filters: Filters,
    suffix: str = "",
    *suffix_params: Any,
    alias: str = "",
) -> sqlite3.Cursor:
    """Runs ``select`` with the filters whose value is not None, ANDed."""
    clauses = [alias + clause for clause, value in filters if value is not None]
    params = [value for _, value in filters if value is not None]
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    # Only constant SQL fragments are joined; every value is a bound parameter.
    return conn.execute(f"{select}{where} {suffix}", [*params, *suffix_params])


def _entry(row: tuple[Any, ...]) -> pb.LogEntry:
    idx, record, digest, appended_at_us, data, redacted_at_us = row
    entry = pb.LogEntry(
        index=idx, record=record, leaf_hash=digest, inputs_redacted=redacted_at_us is not None
    )
    entry.decision.MergeFromString(record)
    if data is not None and redacted_at_us is None:
        entry.decision.inputs.MergeFromString(data)
    entry.appended_at.FromMicroseconds(appended_at_us)
    return entry
