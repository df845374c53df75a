"""The fleet bench's markdown (``bench/fleet.py`` measures; this renders)."""

from __future__ import annotations

from typing import Any

from bench.report import markdown_table


def render(data: dict[str, Any]) -> str:
    m = data["machine"]
    rows = []
    for mode in ("secagg", "plain"):
        if mode not in data["modes"]:
            continue
        s = data["modes"][mode]

        def fmt(x: dict[str, float]) -> str:
            return f"{x['median']} [{x['min']}-{x['max']}]"

        rows.append(
            [
                "SecAgg+" if mode == "secagg" else "plain (no SecAgg+)",
                fmt(s["round_seconds"]),
                fmt(s["server_cpu_s_per_round"]),
                fmt(s["server_cpu_ms_per_hub_round"]),
                s["server_peak_rss_mib"],
                fmt(s["bytes_sent_per_hub_round"]),
                fmt(s["bytes_received_per_hub_round"]),
                "/".join(str(p) for p in s["participants"]),
                "/".join(f"{r['load_1m_start']:.1f}" for r in s["rounds"]),
            ]
        )
    f = data["facts"]
    return "\n".join(
        [
            f"# Fleet bench: {data['hubs']} SuperNodes, one machine",
            "",
            f"{m['date']}, {m['cpu']} ({m['cores']} cores, {m['memory_gib']} GiB), "
            f"{m['platform']}, Python {m['python']}, flwr {data['flwr']}. Load average "
            f"(1 min) before the run: {data['load_before']}. Rounds {data['rounds']} per mode "
            f"(round time: median [min-max] of all rounds; server CPU: of rounds 2-{data['rounds']}, "
            f"round 1's includes the ServerApp's start-up); t = {data['t']}; "
            "SecAgg+ 5 shares, threshold 3; TLS; SuperLink state in memory.",
            "",
            markdown_table(
                [
                    "mode",
                    "round s",
                    "server CPU s / round",
                    "server CPU ms / hub / round",
                    "server peak RSS MiB",
                    "bytes sent / hub / round",
                    "bytes received / hub / round",
                    "hubs per round",
                    "load at round start",
                ],
                rows,
            ),
            "",
            f"SuperLink + SuperExec RSS idle {f['superlink_rss_idle_mib']} MiB, with "
            f"{data['hubs']} SuperNodes connected {f['superlink_rss_connected_mib']} MiB; "
            f"the flower-superlink process alone {f['superlink_process_rss_idle_mib']} -> "
            f"{f['superlink_process_rss_connected_mib']} MiB: "
            f"{f['superlink_rss_per_node_kib']} KiB per connected node. A SuperNode "
            f"idles at RSS {f['supernode_rss_idle_mib']['median']} MiB, "
            f"PSS {f['supernode_pss_idle_mib']['median']} MiB; "
            f"{data['hubs']} started in {f['hubs_started_s']} s. The bench's one SuperExec "
            f"for all of them (bench/fleet_superexec.py) idles at "
            f"{f.get('bench_superexec_rss_idle_mib', '?')} MiB RSS. With every hub "
            f"connected and no round running the server uses "
            f"{f.get('server_cpu_idle_s_per_s', '?')} CPU-s per second (the SuperNodes' "
            "polling and heartbeats): part of each round's server CPU above.",
            "",
            "Server = flower-superlink + flower-superexec + flwr-serverapp (CPU sampled "
            "every 0.25 s). Bytes: Flower's serialized messages as the ClientApp sees "
            "them (metadata + content; HTTP/2 and TLS framing and heartbeats are extra). "
            "Every hub runs on the same 2 cores. Their SuperNodes run with "
            "`--isolation process`; one bench SuperExec runs each ClientApp task with "
            "Flower's own `run_clientapp` in a child forked from a preloaded fork server "
            "(4 tasks per hub per SecAgg+ round, 1 plain), so 50 hubs' Python start-ups "
            "(~1.3 s CPU each with Flower's per-task `flwr-clientapp`) do not swamp the "
            "2 cores. Round time = the hubs' work on 2 shared cores + Flower's polling "
            "(SuperNode pulls, SuperExec task polls every 0.25 s) + the server.",
        ]
    )
