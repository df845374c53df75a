"""The chaos suite's books: readings published, decisions received, what the audit log
holds, and per outage what was lost and how soon the hub decided again.

Pure bookkeeping (no network, no clock of its own), so the accounting is unit-tested on
its own; :mod:`bench.chaos_load` fills the :class:`Ledger`, :mod:`bench.chaos_audit`
reads the log, :mod:`bench.chaos` runs the outages.

Definitions (also in ``bench/results/chaos.md``):

* a reading is *published* once the broker acknowledged it (QoS 1 PUBACK); readings
  offered while no broker was reachable are *not published* and counted apart;
* a published reading is *lost* if it was owed a decision (:func:`owed_decisions`: its
  window was complete) and none was received by the end of the run (a decision's
  ``trigger_id`` is its reading's id); one that completed no window (after a gap in the
  stream, its area's other sensor kinds too old) is *undecided, incomplete*;
* a received decision is *unaudited* if the audit log, read over gRPC at the end, has
  no entry with its ``decision_id`` at its ``audit_index``;
* a *duplicate* is a second decision (another decision id) of one model for one reading;
  a *redelivery* the same decision received again (MQTT QoS 1 retries);
* an audit entry is *acknowledged* once an auditor read it from the log; one read
  before a kill and missing (or at another index) after the restart is *lost*;
* *time to decide again*: from the restarted process being ready to the arrival of
  the first decision of a reading published after that moment.
"""

from __future__ import annotations

import math
import statistics
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

# Reading ids are "<prefix><seq>"; the hub echoes them as the decision's trigger_id.
TRIGGER_PREFIX = "chaos-"


@dataclass(frozen=True)
class Seen:
    """A decision received on MQTT."""

    decision_id: str
    audit_index: int
    model: str
    arrived_at: float  # time.monotonic()


@dataclass(frozen=True)
class Logged:
    """An audit log entry as an auditor reads it."""

    index: int
    decided_at: float  # epoch seconds (the hub's clock)


@dataclass
class Ledger:
    """Every reading offered (``seq`` = its position in the stream) and what came of it."""

    # When each reading was handed to the broker connection (time.monotonic(); for a
    # reading not sent, when it was due). Non-decreasing: index = seq.
    sent_at: list[float] = field(default_factory=list)
    acked: set[int] = field(default_factory=set)
    decisions: dict[int, list[Seen]] = field(default_factory=dict)
    # The highest seq with a decision, and how many decisions arrived (any reading).
    max_decided: int = -1
    received: int = 0
    # Decision messages of ours that did not parse (should stay 0).
    malformed: int = 0

    @property
    def next_seq(self) -> int:
        return len(self.sent_at)

    def offered(self, at: float) -> int:
        """Record a reading offered at ``at``; its seq."""
        self.sent_at.append(at)
        return len(self.sent_at) - 1

    def record(self, trigger_id: str, seen: Seen) -> None:
        """A decision arrived; decisions of other publishers are ignored."""
        if not trigger_id.startswith(TRIGGER_PREFIX):
            return
        try:
            seq = int(trigger_id[len(TRIGGER_PREFIX) :])
        except ValueError:
            self.malformed += 1
            return
        self.decisions.setdefault(seq, []).append(seen)
        self.max_decided = max(self.max_decided, seq)
        self.received += 1

    def undecided(self, lo: int, hi: int) -> int:
        """Published readings ``lo..hi`` (inclusive) without a decision so far."""
        return sum(1 for s in range(lo, hi + 1) if s in self.acked and s not in self.decisions)

    def first_sent_at_or_after(self, at: float) -> int:
        """The first seq offered at or after monotonic time ``at``."""
        return bisect_left(self.sent_at, at)

    def all_seen(self) -> Iterable[Seen]:
        for items in self.decisions.values():
            yield from items


@dataclass
class Outage:
    """One kill: which process, how long it stayed down, and what was seen around it.

    The outage's *window* is the readings ``[first_seq, end_seq)``: from the steady
    load before the kill until decisions caught up after the restart; windows of
    successive outages are contiguous."""

    process: str
    kind: str  # "short" | "long"
    down_seconds: float
    first_seq: int = 0
    end_seq: int = 0
    wall_start: float = 0.0  # time.time(), to attribute audit entries by decided_at
    wall_end: float = 0.0
    killed_at: float = 0.0  # time.monotonic()
    ready_at: float = 0.0
    pid_killed: int = 0
    pid_restarted: int = 0
    # Audit entries an auditor read before the kill, and those of them missing (or at
    # another index) once the process was back.
    acked_before: int = 0
    acked_lost: list[str] = field(default_factory=list)


def unaudited(seen: Iterable[Seen], log: Mapping[str, Logged]) -> list[str]:
    """Received decisions the log lacks, or holds at another index than published."""
    out = []
    for d in seen:
        entry = log.get(d.decision_id)
        if entry is None or entry.index != d.audit_index:
            out.append(d.decision_id)
    return out


def lost_entries(acknowledged: Mapping[str, int], log: Mapping[str, Logged]) -> list[str]:
    """Entries read from the log earlier that it no longer holds at the same index."""
    return [i for i, index in acknowledged.items() if (e := log.get(i)) is None or e.index != index]


def longest_gap(times: Sequence[float]) -> float:
    """The longest interval between consecutive (sorted) times; 0 for fewer than two."""
    return max((b - a for a, b in pairwise(times)), default=0.0)


def owed_decisions(
    ledger: Ledger,
    reading: Callable[[int], tuple[str, str, float]],
    kinds: frozenset[str],
    max_staleness: float,
) -> set[int]:
    """The published readings the hub owes a decision: those after which the window of
    their area holds every kind of ``kinds`` no older (in reading time) than
    ``max_staleness`` before them (``reading(seq)`` = (area, kind, ts); the model's
    :class:`models.features.FeatureSpec`). A reading after a gap in the stream (a
    broker outage leaves readings unpublished) completes no window until the area's
    other kinds were read again: it is taken and owes nothing."""
    latest: dict[tuple[str, str], float] = {}
    owed: set[int] = set()
    for seq in sorted(ledger.acked):
        area, kind, ts = reading(seq)
        if kind not in kinds:
            continue
        latest[area, kind] = ts
        if all(ts - latest.get((area, k), -math.inf) <= max_staleness for k in kinds):
            owed.add(seq)
    return owed


def summarize(
    o: Outage,
    ledger: Ledger,
    log: Mapping[str, Logged],
    received_ids: set[str],
    owed: set[int] | None = None,
) -> dict[str, Any]:
    """One outage's figures (see the module docstring for the definitions). ``owed``:
    the readings owed a decision (:func:`owed_decisions`; None: every published one)."""
    seqs = range(o.first_seq, o.end_seq)
    published = [s for s in seqs if s in ledger.acked]
    undecided = [s for s in published if s not in ledger.decisions]
    lost = [s for s in undecided if owed is None or s in owed]
    ready_seq = max(ledger.first_sent_at_or_after(o.ready_at), o.first_seq)
    kill_seq = max(ledger.first_sent_at_or_after(o.killed_at), o.first_seq)
    seen = [d for s in seqs for d in ledger.decisions.get(s, ())]
    resumed = [
        d.arrived_at for s in range(ready_seq, o.end_seq) for d in ledger.decisions.get(s, ())
    ]
    duplicates = redelivered = 0
    for s in seqs:
        items = ledger.decisions.get(s, ())
        distinct = {(d.model, d.decision_id) for d in items}
        redelivered += len(items) - len(distinct)
        models = [model for model, _ in distinct]
        duplicates += len(models) - len(set(models))
    recorded_unseen = sum(
        1
        for decision_id, e in log.items()
        if o.wall_start <= e.decided_at < o.wall_end and decision_id not in received_ids
    )
    arrivals = sorted(d.arrived_at for d in seen)
    return {
        "process": o.process,
        "kind": o.kind,
        "down_s": o.down_seconds,
        "outage_s": o.ready_at - o.killed_at,
        "pid_killed": o.pid_killed,
        "pid_restarted": o.pid_restarted,
        "offered": len(seqs),
        "published": len(published),
        "not_published": len(seqs) - len(published),
        "lost": len(lost),
        # Taken, but completing no window (after a gap in the stream): owed nothing.
        "undecided_incomplete": len(undecided) - len(lost),
        "lost_while_down": sum(1 for s in lost if kill_seq <= s < ready_seq),
        "lost_after_ready": sum(1 for s in lost if s >= ready_seq),
        "resume_s": (min(resumed) - o.ready_at) if resumed else None,
        # The longest pause between readings offered (the load generator's own health)
        # and between decisions received, in the window.
        "publish_gap_s": longest_gap(ledger.sent_at[o.first_seq : o.end_seq]),
        "decision_gap_s": longest_gap(arrivals),
        "unaudited": len(unaudited(seen, log)),
        "acked_before": o.acked_before,
        "acked_lost": len(o.acked_lost),
        "duplicates": duplicates,
        "redelivered": redelivered,
        "recorded_not_received": recorded_unseen,
    }


def _median(values: Sequence[float | None]) -> float | None:
    """The median of the values; None if any run never resumed (or there are none)."""
    if not values or any(v is None for v in values):
        return None
    return statistics.median(v for v in values if v is not None)


def aggregate(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per (process, outage kind), in first-seen order: medians of the repeated runs'
    losses and times, sums of the invariant counts (they must all be 0)."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["process"], r["kind"]), []).append(r)
    out = []
    for (process, kind), runs in groups.items():
        out.append(
            {
                "process": process,
                "kind": kind,
                "runs": len(runs),
                "down_s": runs[0]["down_s"],
                "published": statistics.median(r["published"] for r in runs),
                "not_published": statistics.median(r["not_published"] for r in runs),
                "lost": statistics.median(r["lost"] for r in runs),
                "lost_runs": [r["lost"] for r in runs],
                "resume_s": _median([r["resume_s"] for r in runs]),
                "resume_runs": [r["resume_s"] for r in runs],
                "unaudited": sum(r["unaudited"] for r in runs),
                "acked_lost": sum(r["acked_lost"] for r in runs),
                "duplicates": sum(r["duplicates"] for r in runs),
                "redelivered": sum(r["redelivered"] for r in runs),
                "recorded_not_received": sum(r["recorded_not_received"] for r in runs),
            }
        )
    return out
