"""The end-to-end benchmark's report: ratios first, absolute figures with the machine and
its load, where the time and CPU go, and the edge metrics (:mod:`bench.e2e` measures)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from bench.report import markdown_table

STAGES = ("intake", "predict", "record", "ordering", "publish")
SERVING = ("hub", "inference", "audit")


def fmt(v: float) -> str:
    return f"{v:.2f}"


def spread_text(s: dict[str, float], digits: int = 2) -> str:
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f} to {s['max']:.{digits}f})"


def floors(res: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    st = res["steady"]
    cpu = st["cpu_ms_per_decision"]["median"]
    return [
        (
            "e2e p50 @200/s / broker echo p50, same run",
            spread_text(st["p50_over_echo"], 1) + "x",
            "<= 5x",
            st["p50_over_echo"]["median"] <= 5,
        ),
        ("e2e p99 @200/s (ms)", spread_text(st["p99"]), "<= 25", st["p99"]["median"] <= 25),
        (
            "max rate for 30 s with p99 <= 100 ms, durable audit (readings/s)",
            str(res["max_rate_p99_within_limit"]),
            ">= 1000",
            res["max_rate_p99_within_limit"] >= 1000,
        ),
        (
            "CPU per decision, hub+inference+audit @200/s (ms)",
            spread_text(st["cpu_ms_per_decision"]),
            "<= 1.0",
            cpu <= 1.0,
        ),
        (
            "idle stack CPU (% of one core)",
            f"{res['idle']['total_percent']:.2f}",
            "<= 2",
            res["idle"]["total_percent"] <= 2,
        ),
        (
            "inference cold start (s)",
            spread_text(res["cold_start_s"]),
            "<= 1.5",
            res["cold_start_s"]["median"] <= 1.5,
        ),
    ]


def _floor_section(st: dict[str, Any]) -> str:
    """Roost against the design's transport floor (bench/transport_floor.py), same run."""
    rows = [
        ("broker echo p50 (ms), x2: reading in, decision out", spread_text(st["echo_p50"])),
        (
            "gRPC stream echo p50, mTLS, loopback (ms), x2: to inference, to audit",
            spread_text(st["grpc_p50"]),
        ),
        ("fsync of 4 KiB p50 (ms), x1: the audit log", spread_text(st["fsync_p50"])),
        ("**floor p50 (ms)**", spread_text(st["floor_p50_ms"])),
        ("Roost e2e p50 / floor p50", spread_text(st["p50_over_floor"], 1) + "x"),
        (
            "floor p50 / broker echo p50",
            f"{st['floor_p50_ms']['median'] / st['echo_p50']['median']:.1f}x",
        ),
        (
            "CPU per gRPC round trip, server + client (ms)",
            spread_text(st["grpc_cpu_ms"]),
        ),
        ("**floor CPU per decision (ms)**: 2 round trips", spread_text(st["floor_cpu_ms"])),
        ("Roost CPU per decision / floor CPU", spread_text(st["cpu_over_floor"], 1) + "x"),
    ]
    return (
        "## Against the design's floor (same run)\n\n"
        "A decision is two MQTT hops, two gRPC round trips on mTLS streams and one fsync. "
        "Each is measured raw, with nothing of Roost in it, just before each steady run: "
        "no implementation of this design in Python with grpcio (separate services, "
        "gRPC with mTLS, audit before publish) goes below `2 x echo + 2 x gRPC + fsync` in latency or `2 x gRPC "
        "round trip` in CPU (MQTT, inference, SQLite and JSON left out).\n\n"
        + markdown_table(["", "median (min to max)"], rows)
    )


def _stage_rows(res: dict[str, Any]) -> list[tuple[str, ...]]:
    rows = []
    for i, rep in enumerate(res["steady"]["repeats"], 1):
        c = rep["cost"]
        stages = c["stage_mean_ms"]
        rows.append(
            (
                f"{res['steady']['rate']}/s #{i}",
                *(fmt(stages[s]["mean_ms"]) if s in stages else "-" for s in STAGES),
                fmt(c["outside_hub_mean_ms"]),
                fmt(c["e2e_mean_ms"]),
                f"{c['mean_batch']:.1f}",
            )
        )
    for step in res["ramp"]:
        c = step["cost"]
        stages = c["stage_mean_ms"]
        rows.append(
            (
                f"{step['rate']}/s",
                *(fmt(stages[s]["mean_ms"]) if s in stages else "-" for s in STAGES),
                fmt(c["outside_hub_mean_ms"]),
                fmt(c["e2e_mean_ms"]),
                f"{c['mean_batch']:.1f}",
            )
        )
    return rows


def _cpu_rows(res: dict[str, Any]) -> list[tuple[str, ...]]:
    runs = [
        (f"{res['steady']['rate']}/s #{i}", r["cost"])
        for i, r in enumerate(res["steady"]["repeats"], 1)
    ] + [(f"{s['rate']}/s", s["cost"]) for s in res["ramp"]]
    return [
        (
            name,
            *(fmt(c["cpu_ms_per_decision"].get(p, float("nan"))) for p in SERVING),
            fmt(c["serving_cpu_ms_per_decision"]),
            fmt(c["cpu_ms_per_decision"].get("mosquitto", float("nan"))),
            f"{c['load_average'][0]:.1f}",
        )
        for name, c in runs
    ]


def render(res: dict[str, Any]) -> tuple[Table, str]:
    st, m = res["steady"], res["machine"]
    table = Table(title="Roost end-to-end benchmark")
    for col in ("metric", "median (min to max)", "floor", "ok"):
        table.add_column(col)
    for name, value, floor, ok in floors(res):
        table.add_row(name, value, floor, "yes" if ok else "NO")
    load = res["load_average"]
    # Only the start says whether other work shared the machine: by the end the ramp's
    # own highest rates have raised the load average.
    loaded = load["start"][0] > 0.5 * m["cores"]
    energy = res["energy_mj_per_decision"]
    side = [
        ("raw onnxruntime session.run, batch 1", spread_text(st["session_p50"], 3), "-", "1x"),
        ("broker echo (pub -> sub)", spread_text(st["echo_p50"]), spread_text(st["echo_p99"]), "-"),
        (
            "gRPC stream echo, mTLS (round trip)",
            spread_text(st["grpc_p50"]),
            spread_text(st["grpc_p99"]),
            "-",
        ),
        (
            f"Roost end to end @{st['rate']}/s",
            spread_text(st["p50"]),
            spread_text(st["p99"]),
            f"p50 {spread_text(st['p50_over_echo'], 1)}x echo, p99 "
            f"{spread_text(st['p99_over_echo'], 1)}x echo, p50 "
            f"{st['p50_over_session']['median']:.0f}x session.run",
        ),
    ]
    md = "\n\n".join(
        [
            "# End-to-end benchmark",
            f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['platform']}, "
            f"Python {m['python']}, {m['broker']}; {m['date']}. Load average (1 min) "
            f"{load['start'][0]:.1f} at the start ({load['end'][0]:.1f} at the end, the ramp's own "
            "load)"
            + (
                " — **a loaded run**: the machine was shared with other work, so absolute "
                "latencies are inflated; the ratios and CPU per decision hold better."
                if loaded
                else "."
            ),
            f"Steady runs: {len(st['repeats'])} x {st['seconds']} s at {st['rate']} readings/s, "
            "each just after its own broker echo and session.run baselines; figures are "
            f"medians of the repeats (min to max). Ramp steps: {res['ramp_seconds']} s.",
            markdown_table(
                ["metric", "median (min to max)", "floor", "ok"],
                [(n, v, f, "yes" if ok else "**NO**") for n, v, f, ok in floors(res)],
            ),
            "## Side by side (latency, ms)\n\n"
            + markdown_table(["path", "p50", "p99", "ratio"], side),
            _floor_section(st),
            "## Where the time goes (mean ms; intake per reading, other stages per batch)\n\n"
            "`outside hub` = mean end to end minus the hub's mean reading-to-published: MQTT "
            "in and out through the broker, and the wait for the hub's loop.\n\n"
            + markdown_table(
                ["run", *STAGES, "outside hub", "e2e mean", "batch"], _stage_rows(res)
            ),
            "## CPU per decision (ms, /proc utime+stime)\n\n"
            + markdown_table(
                ["run", *SERVING, "serving total", "broker", "load avg"], _cpu_rows(res)
            ),
            "## Ramp\n\n"
            "Ratios are to the broker echo of the steady runs (median p50 "
            f"{fmt(st['echo_p50']['median'])} ms, p99 {fmt(st['echo_p99']['median'])} ms): "
            "the ramp runs after them, with no echo of its own.\n\n"
            + markdown_table(
                [
                    "offered/s",
                    "achieved/s",
                    "p50 ms",
                    "p50 / echo",
                    "p99 ms",
                    "p99 / echo",
                    "keeps up",
                    "p99 <= 100 ms",
                ],
                [
                    (
                        r["rate"],
                        f"{r['achieved']:.0f}",
                        fmt(r["p50"]),
                        f"{r['p50'] / st['echo_p50']['median']:.0f}x",
                        fmt(r["p99"]),
                        f"{r['p99'] / st['echo_p99']['median']:.0f}x",
                        "yes" if r["keeps_up"] else "no",
                        "yes" if r["sustained"] else "no",
                    )
                    for r in res["ramp"]
                ],
            ),
            "## Edge metrics\n\n"
            + markdown_table(
                ["metric", "value"],
                [
                    (
                        "CPU-seconds per 1,000 decisions (hub+inference+audit, @200/s)",
                        fmt(st["cpu_ms_per_decision"]["median"]),
                    ),
                    (
                        f"idle CPU, {res['idle']['seconds']:.0f} s without readings "
                        "(% of one core)",
                        ", ".join(
                            f"{k} {v:.2f}" for k, v in res["idle"]["percent_of_one_core"].items()
                        )
                        + f"; total {res['idle']['total_percent']:.2f}",
                    ),
                    (
                        "energy per decision",
                        energy if isinstance(energy, str) else f"{energy:.2f} mJ (RAPL package)",
                    ),
                    ("inference cold start (s)", spread_text(res["cold_start_s"])),
                    (
                        "peak RSS serving path, hub+inference+audit (MB)",
                        f"{res['rss_serving_total_mb']:.0f} ("
                        + ", ".join(f"{k} {res['rss_peak_mb'][k]:.0f}" for k in SERVING)
                        + ")",
                    ),
                    (
                        "peak RSS personalization, apart (MB)",
                        f"{res['rss_personalization_mb']:.0f}",
                    ),
                ],
            ),
        ]
    )
    return table, md


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    st = res["steady"]
    ramp = [
        {"rate": st["rate"], "p50": st["p50"]["median"], "p99": st["p99"]["median"]},
        *res["ramp"],
    ]
    rates = [r["rate"] for r in ramp]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(rates, [r["p50"] for r in ramp], "o-", label="Roost p50")
    ax.plot(rates, [r["p99"] for r in ramp], "s-", label="Roost p99")
    ax.axhline(st["echo_p50"]["median"], color="grey", ls=":", label="broker echo p50")
    if "floor_p50_ms" in st:  # runs before bench/transport_floor.py have no floor
        ax.axhline(
            st["floor_p50_ms"]["median"],
            color="green",
            ls="-.",
            label="design floor p50 (2 echo + 2 gRPC + fsync)",
        )
    ax.axhline(100.0, color="red", ls="--", label="p99 limit (100 ms)")
    ax.set_xlabel("offered readings per second")
    ax.set_ylabel("reading -> decision latency (ms)")
    ax.set_yscale("log")
    ax.set_title(f"Roost end to end on {res['machine']['cores']} cores")
    ax.legend(loc="center right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
