"""What ``roost audit verify`` proved, and the auditor's own ``--filter``.

:func:`summary_lines` says what a verified bundle proves: the whole log, every entry
of a ``logged_at`` range, or (a bundle the hub filtered) membership only.

``--filter entity=…``, ``--filter model=name[@version]`` and ``--filter action=…`` pick
entries from what was verified, on their signed records: over a complete range, the
auditor knows nothing matching was left out. The hub's own (server-side) filters work
on unsigned query columns, so a bundle it filtered proves membership only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cli.audit_output import entry_line
from cli.support import CliError

if TYPE_CHECKING:
    from roost.audit.v1 import audit_service_pb2 as pb
    from services.audit.bundle_format import ExportFilters
    from services.audit.verify import BundleReport

__all__ = ["FILTER_KEYS", "Matches", "parse_filters", "summary_lines"]

FILTER_KEYS = ("entity", "model", "action")


def parse_filters(specs: list[str]) -> ExportFilters | None:
    """``--filter KEY=VALUE`` options (ANDed) as filters; None when there are none."""
    from services.audit.bundle_format import ExportFilters

    if not specs:
        return None
    fields: dict[str, str] = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        if not sep or key not in FILTER_KEYS or not value:
            raise CliError(
                f"--filter {spec[:40]!r}: expected KEY=VALUE with KEY one of"
                f" {', '.join(FILTER_KEYS)} (e.g. --filter entity=light.kitchen)"
            )
        if key in fields:
            raise CliError(f"--filter {key}=… given twice; filters are ANDed")
        fields[key] = value
    name, _, version = fields.get("model", "").partition("@")
    return ExportFilters(
        entity_id=fields.get("entity", ""),
        model_name=name,
        model_version=version,
        action=fields.get("action", ""),
    )


class Matches:
    """The verified entries matching ``--filter``, one line each (shown once all verify)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, index: int, decision: pb.Decision) -> None:
        from roost.audit.v1 import audit_service_pb2 as pb

        self.lines.append(entry_line(pb.LogEntry(index=index, decision=decision)))


def summary_lines(report: BundleReport, took: float) -> list[str]:
    """``verify``'s report: what was checked, and what the bundle proves."""
    lines = [
        f"OK: {report.entries:,} entries of {report.origin} verified in {took:.1f} s",
        f"  checkpoint: {report.tree_size:,} entries, root {report.root_hash.hex()}",
        *_scope_lines(report),
    ]
    if report.redacted:
        lines.append(
            f"  {report.redacted} entries have redacted inputs (their records still verify)"
        )
    lines.extend(
        f"  consistent with your earlier checkpoint of {size:,} entries"
        for size in report.consistency_checked
    )
    return lines


def _scope_lines(report: BundleReport) -> list[str]:
    """What the bundle proves: the whole log, every entry of a range, or membership only."""
    lines = []
    if report.logged is not None:
        start, end = (_bound(report.logged.start_us), _bound(report.logged.end_us))
        lines.append(f"  range: logged_at from {start} until {end} (excluded)")
    if report.covers_log:
        scope = "the complete log"
    elif report.complete:
        scope = "every entry of the range: none was left out"
    else:
        scope = (
            "a filtered export: proves membership only, NOT completeness, since the hub"
            " filtered on unsigned columns; export the range unfiltered and use --filter"
        )
    span = f"leaf indexes {report.first_index}..{report.last_index} " if report.entries else ""
    lines.append(f"  {span}({scope})")
    return lines


def _bound(us: int | None) -> str:
    from services.kit.clock import from_us

    return "open" if us is None else from_us(us).isoformat(timespec="microseconds")
