"""The audit benchmark's report: floors, the markdown and console tables, and the plot
(:mod:`bench.audit` measures; :mod:`bench.audit_plan` holds the sizes and floors)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from bench import audit_startup
from bench.audit_plan import (
    BUILD_CHUNK,
    MAX_PROOF_P50_MS,
    MAX_VERIFY_S,
    MIN_RAW_SHARE,
    MIN_RECORDS_PER_S,
)
from bench.report import markdown_table


def floors(res: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    """(metric, value, floor, ok); ok is None when the section did not run."""
    out: list[tuple[str, str, str, bool | None]] = []
    tp = res.get("throughput")
    if tp:
        rate, share = tp["audit_log"]["median"], tp["ratio_vs_raw"]
        out.append(
            (
                "AuditLog durable appends, median (records/s)",
                f"{rate:,.0f}",
                f">= {MIN_RECORDS_PER_S:,}",
                rate >= MIN_RECORDS_PER_S,
            )
        )
        out.append(
            (
                "AuditLog / raw SQLite (same rows, same schema)",
                f"{share:.0%}",
                f">= {MIN_RAW_SHARE:.0%}",
                share >= MIN_RAW_SHARE,
            )
        )
    else:
        out.append(("durable append throughput", "not run", f">= {MIN_RECORDS_PER_S:,}/s", None))
    pr = res.get("proofs")
    if pr:
        out.append(
            (
                f"inclusion proof at {pr['entries']:,} entries, AuditStore p50 (ms)",
                f"{pr['store']['p50']:.3f}",
                f"<= {MAX_PROOF_P50_MS:g}",
                pr["store"]["p50"] <= MAX_PROOF_P50_MS,
            )
        )
    else:
        out.append(("inclusion proof p50 (ms)", "not run", f"<= {MAX_PROOF_P50_MS:g}", None))
    ex = res.get("export")
    if ex:
        out.append(
            (
                f"verify {ex['entries']:,}-entry time-range bundle, completeness proven,"
                " median (s)",
                f"{ex['verify_s']['median']:.2f}",
                f"<= {MAX_VERIFY_S:g}",
                ex["verify_s"]["median"] <= MAX_VERIFY_S,
            )
        )
    else:
        out.append(("offline bundle verification (s)", "not run", f"<= {MAX_VERIFY_S:g}", None))
    return out


def load_note(res: dict[str, Any]) -> str:
    """The machine's load (1-minute average) at the start and end of the run, if known."""
    load = res.get("load_average")
    if not load:
        return ""
    return (
        f" Load average (1 min) {load['start']:.1f} at the start, {load['end']:.1f} at the end,"
        f" on {res['machine']['cores']} cores: other work shared the machine."
    )


def export_intro(ex: dict[str, Any]) -> str:
    """How section 4's bundle was chosen (older results lack the range fields)."""
    if "leaf_range" not in ex:
        return ""
    first, end = ex["leaf_range"]
    return (
        f"A time-range export (`logged_from`/`logged_until`, as `roost audit export --since"
        f" --until`) of leaves {first:,}..{end - 1:,} of the {ex['log_entries']:,}-entry log:"
        " every entry proof, plus the proofs of the boundary entries just outside the range,"
        " which `verify_bundle` checks to prove that no entry of the range was left out.\n\n"
    )


def filter_rows(ex: dict[str, Any]) -> list[tuple[str, str]]:
    """Section 4's CPU-time and client-side filter rows, when measured."""
    if "filter_verify_s" not in ex:
        return []
    cpu = ex["verify_cpu_s"]
    return [
        (
            "verify_bundle CPU time, median (s): wall time minus waiting for a core",
            f"{cpu['median']:.2f} (runs " + ", ".join(f"{x:.2f}" for x in cpu["runs"]) + ")",
        ),
        (
            "verify_bundle + client-side filter (one entity), s",
            f"{ex['filter_verify_s']:.2f} ({ex['filter_matched']:,} entries match)",
        ),
    ]


def verdict(ok: bool | None) -> str:
    return "PASS" if ok else "FAIL" if ok is False else "not run"


def failed(res: dict[str, Any]) -> bool:
    """A floor failed or could not be measured."""
    return any(ok is not True for *_, ok in floors(res))


def fmt_ms(v: float) -> str:
    return f"{v:.3f}" if v < 1 else f"{v:.2f}"


def render(res: dict[str, Any]) -> tuple[Table, str]:
    m = res["machine"]
    fl = floors(res)
    table = Table(
        title="Roost audit log benchmark" + (" (quick smoke run)" if res["quick"] else "")
    )
    for col in ("metric", "value", "floor", "ok"):
        table.add_column(col)
    rows: list[tuple[str, str, str, str]] = [(n, v, f, verdict(ok)) for n, v, f, ok in fl]
    parts = [
        "# Audit log benchmark"
        + (" (quick smoke run, not the reference numbers)" if res["quick"] else ""),
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['platform']}, "
        f"Python {m['python']}, SQLite {m['sqlite']}; {m['date']}. A one-row durable commit "
        f"(WAL, synchronous=FULL, fsync) takes p50 {m['fsync_commit_ms']['p50']:.2f} ms / "
        f"p99 {m['fsync_commit_ms']['p99']:.2f} ms on this disk. Whole run: {res['total_s']:.0f} s."
        + load_note(res),
        "## Floors\n\n"
        + markdown_table(
            ["metric", "value", "floor", "ok"],
            [(n, v, f, verdict(ok) if ok is not False else "**FAIL**") for n, v, f, ok in fl],
        ),
    ]
    tp = res.get("throughput")
    if tp:
        raw = tp["raw_same_schema"]["median"]
        side = [
            (
                "raw SQLite, bare tables (entries + inputs columns, no index): context",
                tp["raw_sqlite"],
            ),
            (
                "raw SQLite, the store's rows (entries, inputs, tree nodes, state) into its "
                "schema, executemany, 1 txn per batch: the floor's baseline",
                tp["raw_same_schema"],
            ),
            ("AuditStore.append_prepared, 1 txn per batch, 1 thread", tp["audit_store"]),
            (
                f"AuditLog.append, {tp['appenders']} concurrent appenders, group commit",
                tp["audit_log"],
            ),
        ]
        tp_rows = [
            (
                name,
                f"{r['median']:,.0f}",
                ", ".join(f"{x:,.0f}" for x in r["runs"]),
                f"{r['median'] / raw:.2f}x",
            )
            for name, r in side
        ]
        commits = tp["audit_log_commits"]
        parts.append(
            "## 1. Durable append throughput (records/s)\n\n"
            f"{tp['records']:,} decisions per run in {tp['batches']} batches of "
            f"{tp['batch_sizes'][0]}..{tp['batch_sizes'][1]}; every variant on a fresh "
            "database, repeats interleaved, median quoted. The floor's baseline inserts "
            "exactly the rows the store writes (entries, inputs, Merkle tree nodes, tree "
            "state; computed before timing) into the store's own schema; the bare-table "
            "variant (no indexes, no tree) is shown for context. AuditLog also validates, "
            "serializes and hashes each decision and builds the tree as it goes. "
            f"AuditLog vs bare tables: {tp['ratio_vs_plain']:.0%}. "
            "AuditLog group commits per run: "
            + ", ".join(map(str, commits))
            + ". AuditLog / raw per repeat: "
            + ", ".join(f"{r:.0%}" for r in tp.get("paired_ratios", []))
            + ".\n\n"
            + markdown_table(["path", "median", "runs", "vs raw"], tp_rows)
        )
        rows.append(("raw SQLite, median (records/s)", f"{raw:,.0f}", "-", ""))
        rows.append(
            (
                "AuditStore per batch, median (records/s)",
                f"{tp['audit_store']['median']:,.0f}",
                "-",
                "",
            )
        )
    lat = res.get("latency")
    if lat:
        lat_rows = []
        for where, label in (
            ("in_process", "AuditLog.append in process"),
            ("grpc", "AppendDecisions over gRPC (mTLS), separate process"),
        ):
            if where in lat:
                r = lat[where]
                lat_rows.append(
                    (
                        label,
                        fmt_ms(r["p50"]),
                        fmt_ms(r["p99"]),
                        fmt_ms(r["max"]),
                        f"{fmt_ms(r['sender_lag']['p50'])} / {fmt_ms(r['sender_lag']['p99'])}",
                    )
                )
                rows.append(
                    (
                        f"append latency @{lat['rate']}/s, {where} p50 / p99 / max (ms)",
                        f"{fmt_ms(r['p50'])} / {fmt_ms(r['p99'])} / {fmt_ms(r['max'])}",
                        "-",
                        "",
                    )
                )
        note = f"\n\ngRPC run not measured: {lat['grpc_error']}" if "grpc_error" in lat else ""
        parts.append(
            f"## 2. Append latency at a paced {lat['rate']} records/s (ms)\n\n"
            f"Open loop, one decision per append, {lat['appends']:,} appends over "
            f"{lat['seconds']:g} s after a warm-up; latency from each append's *scheduled* "
            "time to its durable acknowledgement (no coordinated omission). The sender lag "
            "(actual minus scheduled send) is the load generator's timer slack, included "
            "in the latency.\n\n"
            + markdown_table(["path", "p50", "p99", "max", "sender lag p50 / p99"], lat_rows)
            + note
        )
    pr = res.get("proofs")
    if pr:
        b = pr["build"]
        built = (
            f"built in {b['build_s']:.0f} s ({b['generate_prepare_s']:.0f} s generating and "
            f"preparing, {b['append_s']:.0f} s in append_prepared, batches of {BUILD_CHUNK:,})"
        )
        cache = (
            "cached from an earlier run, which " + built if b["cached"] else built + " in this run"
        )
        pr_rows = [
            (label, fmt_ms(pr[k]["p50"]), fmt_ms(pr[k]["p99"]), fmt_ms(pr[k]["max"]))
            for k, label in (
                ("store", "AuditStore.inclusion_proof (writer connection)"),
                ("store_read_only", "AuditStore.inclusion_proof (read-only connection)"),
                ("audit_log", "AuditLog.inclusion_proof (id lookup + reader thread hop)"),
            )
        ]
        parts.append(
            f"## 3. Inclusion proofs at {pr['entries']:,} entries (ms)\n\n"
            f"{pr['calls']:,} random leaves, tree size {pr['tree_size']:,}, one call at a time. "
            f"The log was {cache}.\n\n" + markdown_table(["call", "p50", "p99", "max"], pr_rows)
        )
        rows.append(
            (
                "AuditLog.inclusion_proof p50 / p99 (ms)",
                f"{fmt_ms(pr['audit_log']['p50'])} / {fmt_ms(pr['audit_log']['p99'])}",
                "-",
                "",
            )
        )
        rows.append(
            (
                f"{pr['entries']:,}-entry log build (s)",
                f"{b['build_s']:.0f}",
                "-",
                "cached" if b["cached"] else "",
            )
        )
    ex = res.get("export")
    if ex:
        parts.append(
            f"## 4. Export and offline verification of {ex['entries']:,} entries\n\n"
            + export_intro(ex)
            + markdown_table(
                ["metric", "value"],
                [
                    ("export (iter_bundle to a file), s", f"{ex['export_s']:.2f}"),
                    ("bundle size, MB", f"{ex['bundle_bytes'] / 1e6:.1f}"),
                    ("bundle bytes per entry", f"{ex['bytes_per_entry']:.0f}"),
                    (
                        "verify_bundle, median (s)",
                        f"{ex['verify_s']['median']:.2f} (runs "
                        + ", ".join(f"{x:.2f}" for x in ex["verify_s"]["runs"])
                        + ")",
                    ),
                    ("verify rate, entries/s", f"{ex['entries'] / ex['verify_s']['median']:,.0f}"),
                    *filter_rows(ex),
                ],
            )
            + (f"\n\nVerifier report: {ex['report']}" if ex["report"] else "")
        )
        rows.append(
            (
                "export time / bytes per entry",
                f"{ex['export_s']:.2f} s / {ex['bytes_per_entry']:.0f} B",
                "-",
                "",
            )
        )
    dk = res.get("disk")
    if dk:
        dk_rows = []
        for name, d in dk.items():
            dk_rows.append(
                (
                    name,
                    f"{d['bytes_per_record']:.0f}",
                    f"{d['tree_bytes_per_record']:.0f}",
                    f"{d['tree_share']:.1%}",
                    f"{(d['db_bytes'] + d['wal_bytes']) / 1e6:.1f}",
                )
            )
            rows.append(
                (
                    f"bytes/record on disk ({dk_rows[-1][0]})",
                    f"{d['bytes_per_record']:.0f} (tree {d['tree_share']:.0%})",
                    "-",
                    "",
                )
            )
        first = next(iter(dk.values()))
        breakdown = markdown_table(
            ["part", "bytes per record", "share"],
            [
                (
                    k,
                    f"{v / first['entries']:.0f}",
                    f"{v / (first['db_bytes'] + first['wal_bytes']):.1%}",
                )
                for k, v in first["breakdown_bytes"].items()
            ],
        )
        parts.append(
            "## 5. Bytes per record on disk\n\n"
            "Database + WAL after `PRAGMA wal_checkpoint(TRUNCATE)`, divided by entries. "
            f"Tree share: {first['method']}.\n\n"
            + markdown_table(
                ["log", "bytes/record", "tree bytes/record", "tree share", "total MB"], dk_rows
            )
            + f"\n\nBreakdown of the first log ({next(iter(dk))}):\n\n"
            + breakdown
        )
    new_rows, new_parts = audit_startup.report(res)
    rows += new_rows
    parts += new_parts
    if res["errors"]:
        parts.append(
            "## Not measured\n\n" + "\n".join(f"* {k}: `{v}`" for k, v in res["errors"].items())
        )
    for row in rows:
        table.add_row(*row)
    return table, "\n\n".join(parts)


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    tp = res.get("throughput")
    if tp:
        names = [
            "raw SQLite\nbare tables",
            "raw SQLite\nsame rows+schema",
            "AuditStore\nper batch",
            "AuditLog\ngroup commit",
        ]
        keys = ["raw_sqlite", "raw_same_schema", "audit_store", "audit_log"]
        medians = [tp[k]["median"] / 1000 for k in keys]
        ax1.bar(names, medians, color=["grey", "silver", "tab:blue", "tab:green"])
        for i, k in enumerate(keys):
            ax1.plot([i] * len(tp[k]["runs"]), [r / 1000 for r in tp[k]["runs"]], "k.", ms=4)
        ax1.axhline(MIN_RECORDS_PER_S / 1000, color="red", ls="--", label="floor 20k/s")
        ax1.axhline(
            MIN_RAW_SHARE * tp["raw_same_schema"]["median"] / 1000,
            color="orange",
            ls=":",
            label="50% of raw SQLite (same rows)",
        )
        ax1.set_ylabel("durable records/s (thousands)")
        ax1.set_title("append throughput (median, dots = runs)")
        ax1.legend()
    lat = res.get("latency")
    if lat:
        wheres = [w for w in ("in_process", "grpc") if w in lat]
        width = 0.8 / max(1, len(wheres))
        for j, where in enumerate(wheres):
            vals = [lat[where][q] for q in ("p50", "p99", "max")]
            xs = [i + j * width for i in range(3)]
            bars = ax2.bar(xs, vals, width, label=where.replace("_", "-"))
            ax2.bar_label(bars, fmt="%.1f", fontsize=8)
        ax2.set_xticks([i + width * (len(wheres) - 1) / 2 for i in range(3)], ["p50", "p99", "max"])
        ax2.set_ylabel("append latency (ms)")
        ax2.set_title(f"paced {lat['rate']} records/s, open loop")
        ax2.legend()
    fig.suptitle(f"Roost audit log on {res['machine']['cores']} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
