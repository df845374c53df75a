"""The chaos suite's report: the printed table, the markdown and the plot of a result."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.table import Table

from bench.report import markdown_table

LABELS = {"mosquitto": "broker"}
DEFINITIONS = """\
Definitions. A reading is *published* once the broker acknowledged it (QoS 1); readings
offered while no broker was reachable are *not published*. A published reading is *lost*
if it was owed a decision (it completed its area's window: every sensor kind of the
occupancy spec read within its 15-minute staleness) and none arrived by the end of the
run. After a broker outage the stream has a gap, so an area's first readings after it
complete no window until its other kinds are read again: *undecided, incomplete* (the
hub took them and rightly decided nothing). *Decide again*: from the restarted
process being ready (its ready file, or the broker's port) to the first decision of a
reading published after that. *Unaudited*: a decision received on MQTT that the audit log,
read over gRPC at the end, lacks at its published index. *Acknowledged lost*: an entry an
auditor read before the kill that is missing or moved after the restart (the newest
20,000 re-read after each restart; the whole log at the end). *Duplicates*: extra
decisions (other decision ids) of one model for one reading; *redelivered*: the same
decision received again. *Recorded, not received*: log entries decided
in the outage's window whose decision never arrived on MQTT. *Longest pause*: between
two decisions received, and between two readings offered (the load generator's own
pacing: if it is small, a pause in decisions is the stack's). Each outage's window runs
from the steady load before the kill until decisions caught up after the restart and the
backlog drained (the hub decides fresh readings first; the backlog's decisions arrive
*late*, on `<entity topic>/late`, and count like any other). Decisions are received on a
persistent session (QoS 1), like the hub's readings: the broker keeps them while the
recorder reconnects. Readings *not published* are the load generator's own loss (no
broker to take them), not the hub's (docs/reliability.md)."""


def _s(v: float | None) -> str:
    return "never" if v is None else f"{v:.2f}"


def _n(v: float) -> str:
    return f"{v:,.0f}" if float(v).is_integer() else f"{v:,.1f}"


def verdicts(res: Mapping[str, Any]) -> list[tuple[str, str, bool]]:
    """The hard invariants: (what, measured, held)."""
    t = res["totals"]
    never = [
        f"{LABELS.get(r['process'], r['process'])} {r['kind']}"
        for r in res["outages"]
        if r["resume_s"] is None
    ]
    return [
        ("published but unaudited decisions", str(t["unaudited"]), t["unaudited"] == 0),
        (
            "acknowledged audit entries lost",
            f"{t['acked_lost']} of {t['acked_checked']:,}",
            t["acked_lost"] == 0 and all(r["acked_lost"] == 0 for r in res["outages"]),
        ),
        (
            "the hub decides again after every restart",
            "yes" if not never else "never after " + ", ".join(never),
            not never,
        ),
    ]


SUMMARY_HEADERS = (
    "process",
    "outage",
    "runs",
    "down (s)",
    "published",
    "not published",
    "lost (median)",
    "decide again (s, median)",
    "unaudited",
    "ack'd lost",
    "duplicates",
    "redelivered",
    "recorded, not received",
)


def _summary_rows(res: Mapping[str, Any]) -> list[tuple[str, ...]]:
    return [
        (
            LABELS.get(r["process"], r["process"]),
            r["kind"],
            str(r["runs"]),
            f"{r['down_s']:g}",
            _n(r["published"]),
            _n(r["not_published"]),
            _n(r["lost"]),
            _s(r["resume_s"]),
            str(r["unaudited"]),
            str(r["acked_lost"]),
            str(r["duplicates"]),
            str(r["redelivered"]),
            str(r["recorded_not_received"]),
        )
        for r in res["summary"]
    ]


def _run_rows(res: Mapping[str, Any]) -> list[tuple[str, ...]]:
    return [
        (
            LABELS.get(r["process"], r["process"]),
            r["kind"],
            f"{r['outage_s']:.1f}",
            f"{r['published']:,}",
            f"{r['not_published']:,}",
            f"{r['lost']:,}",
            f"{r['lost_while_down']:,}",
            f"{r['lost_after_ready']:,}",
            f"{r.get('undecided_incomplete', 0):,}",
            _s(r["resume_s"]),
            f"{r['decision_gap_s']:.2f} / {r['publish_gap_s']:.2f}",
            str(r["unaudited"]),
            f"{r['acked_lost']} / {r['acked_before']:,}",
            str(r["duplicates"]),
            str(r["redelivered"]),
            str(r["recorded_not_received"]),
        )
        for r in res["outages"]
    ]


# The printed table's (narrower) headers, column for column.
SHORT_HEADERS = (
    "process",
    "outage",
    "runs",
    "down s",
    "published",
    "unpub.",
    "lost",
    "again s",
    "unaud.",
    "ack lost",
    "dup.",
    "redel.",
    "unseen",
)


def render(res: Mapping[str, Any]) -> tuple[Table, str]:
    title = f"Roost chaos suite ({res.get('mode', '?')}, {res['rate']:g} readings/s)"
    table = Table(title=title)
    for col in SHORT_HEADERS:
        table.add_column(col)
    for row in _summary_rows(res):
        table.add_row(*row)
    checks = verdicts(res)
    table.caption = "; ".join(f"{w}: {v} ({'ok' if ok else 'FAILED'})" for w, v, ok in checks)
    m = res["machine"]
    t = res["totals"]
    md = "\n\n".join(
        [
            f"# Chaos suite ({res.get('mode', '?')} run)",
            f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['platform']}, "
            f"Python {m['python']}, {m['broker']}; {m['date']}. Everything (broker, five Roost "
            f"processes, the load generator) on the same machine, over loopback.",
            f"Load: {res['rate']:g} readings/s; each process SIGKILLed by PID, kept down, "
            "restarted by the harness through the Stack API on the same port "
            "(`python -m bench.chaos`; `--quick` for the short version).",
            "## Invariants\n\n"
            + markdown_table(
                ["invariant", "measured", "held"],
                [(w, v, "yes" if ok else "**NO**") for w, v, ok in checks],
            ),
            "## Per process (medians over repeated runs; invariant counts summed)\n\n"
            + markdown_table(SUMMARY_HEADERS, _summary_rows(res)),
            "## Every outage\n\n"
            + markdown_table(
                [
                    "process",
                    "outage",
                    "back after (s)",
                    "published",
                    "not published",
                    "lost",
                    "while down",
                    "after ready",
                    "undecided, incomplete",
                    "decide again (s)",
                    "longest pause: decisions / readings (s)",
                    "unaudited",
                    "ack'd lost / checked",
                    "duplicates",
                    "redelivered",
                    "recorded, not received",
                ],
                _run_rows(res),
            ),
            f"Totals over {res.get('duration_s', 0) / 60:.1f} minutes: "
            f"{t['offered']:,} readings offered, {t['published']:,} published, "
            f"{t['decided_readings']:,} decided ({t['decisions_received']:,} decisions "
            f"received), {t['log_entries']:,} audit log entries; "
            f"{t['recorded_not_received']:,} recorded but never received on MQTT.",
            "Log lines written during the run (WARNING and above): "
            + ", ".join(f"{k} {v:,}" for k, v in res.get("log_lines", {}).items()),
            DEFINITIONS,
        ]
    )
    return table, md


def plot(res: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = res["summary"]
    kinds = sorted({r["kind"] for r in rows}, key=lambda k: k != "short")
    processes = list(dict.fromkeys(r["process"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    width = 0.8 / max(len(kinds), 1)
    for k, kind in enumerate(kinds):
        by = {r["process"]: r for r in rows if r["kind"] == kind}
        xs = [i + k * width for i in range(len(processes))]
        down = next(iter(by.values()))["down_s"]
        lost = [by[p]["lost"] if p in by else 0 for p in processes]
        again = [(by[p]["resume_s"] or 0.0) if p in by else 0.0 for p in processes]
        axes[0].bar(xs, lost, width, label=f"{kind} outage ({down:g} s)")
        axes[1].bar(xs, again, width, label=f"{kind} outage ({down:g} s)")
    names = [LABELS.get(p, p) for p in processes]
    for ax, ylabel in zip(
        axes, ("published readings lost", "time to decide again (s)"), strict=True
    ):
        ticks = [i + width * (len(kinds) - 1) / 2 for i in range(len(processes))]
        ax.set_xticks(ticks, names, rotation=20, ha="right")
        ax.set_ylabel(ylabel)
        ax.legend()
    fig.suptitle(f"Roost under SIGKILL at {res['rate']:g} readings/s ({res.get('mode', '?')} run)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
