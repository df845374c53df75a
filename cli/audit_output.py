"""How ``roost audit`` shows log entries: one-line, JSON and full views, and progress bars.

Protobuf and rich are imported lazily, so ``roost --help`` stays instant.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from roost.audit.v1 import audit_service_pb2 as pb

__all__ = ["ProgressBar", "actor_name", "entry_json", "entry_line", "show_entry", "timestamp"]


def timestamp(ts: Any) -> str:
    """A protobuf Timestamp as ISO 8601 UTC, to the second."""
    return datetime.fromtimestamp(ts.ToMicroseconds() / 1e6, UTC).isoformat(timespec="seconds")


def actor_name(value: int) -> str:
    """``automatic``, ``admin``, ... for an ``Actor`` enum value."""
    from roost.audit.v1 import audit_service_pb2 as pb

    return pb.Actor.Name(value).removeprefix("ACTOR_").lower()  # type: ignore[arg-type]


def entry_line(entry: pb.LogEntry) -> str:
    """One log entry on one line (``tail``, ``query``)."""
    d = entry.decision
    model = f"{d.model.name}@{d.model.version}" if d.model.name else "-"
    label = d.output_label if len(d.output_label) <= 24 else d.output_label[:23] + "…"
    return (
        f"#{entry.index:<7} {timestamp(d.decided_at)}  {d.entity_id:30} {label:24} "
        f"conf={d.confidence:.2f}  {model:18} {d.action or '-':20} {actor_name(d.actor)}"
    )


def entry_json(entry: pb.LogEntry) -> str:
    """One log entry as one line of JSON (``--json``)."""
    from google.protobuf.json_format import MessageToDict

    return json.dumps(MessageToDict(entry), separators=(",", ":"))


def show_entry(entry: pb.LogEntry, out: TextIO) -> None:
    """One log entry in full, one field per line (``show``)."""
    from roost.audit.v1 import audit_service_pb2 as pb

    d = entry.decision
    rows: list[tuple[str, str]] = [
        ("decision", d.decision_id),
        ("leaf", f"#{entry.index}  {entry.leaf_hash.hex()}"),
        ("decided at", timestamp(d.decided_at)),
        ("appended at", timestamp(entry.appended_at)),
        ("hub / entity", f"{d.hub_id} / {d.entity_id}"),
        ("model", f"{d.model.name} {d.model.version}  sha256 {d.model.sha256}"),
        ("output", f"{d.output_label}  values={[round(v, 4) for v in d.output_values]}"),
        ("confidence", f"{d.confidence:.3f}"),
        ("policy", f"{d.policy.policy_id}: {pb.PolicyVerdict.Name(d.policy.verdict)}"),
        ("  reason", d.policy.reason or "-"),
        ("action", d.action or "-"),
        ("actor", actor_name(d.actor)),
        ("inputs digest", d.inputs_digest or "-"),
    ]
    if entry.inputs_redacted:
        rows.append(("inputs", "[redacted] (the digest above still binds them)"))
    elif d.HasField("inputs"):
        values = list(d.inputs.tensor.float_values)
        names = list(d.inputs.feature_names)
        rows.append(("inputs", f"{len(values)} values"))
        width = len(names) or 1
        for i, name in enumerate(names):
            column = values[i::width]
            rows.append((f"  {name}", ", ".join(f"{v:g}" for v in column[-6:])))
    rows.extend(("  why", f"{a.feature}: {a.attribution:+.4f}") for a in d.explanation)
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        out.write(f"{key:{width}}  {value}\n")


class ProgressBar:
    """A rich progress bar on stderr when it is a terminal; silent otherwise."""

    def __init__(self, what: str, total: int | None, unit: str) -> None:
        self._what = what
        self._total = total
        self._unit = unit
        self._bar: Any = None

    def __enter__(self) -> Any:
        if not sys.stderr.isatty():
            return lambda n: None
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TimeElapsedColumn,
            TransferSpeedColumn,
        )

        self._bar = Progress(
            *Progress.get_default_columns()[:1],
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeElapsedColumn(),
            transient=True,
        )
        self._bar.start()
        task = self._bar.add_task(self._what, total=self._total)
        return lambda n: self._bar.advance(task, n)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
