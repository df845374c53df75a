"""fp32 vs int8 for every shipped model: size, session.run latency, quality.

Both precisions are timed interleaved in one run (one row, one thread), and their
quality is recomputed from the artifacts by each task's ``evaluate``. Results:
a printed table and bench/results/models.{json,md}.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from bench.machine import machine_info
from bench.report import markdown_table, percentile, write
from models import tasks
from models.datasets import DatasetMissing, data_dir_from_env
from models.export import session
from models.manifest import MANIFEST_FILE, Manifest, load_manifest, shipped_models_dir

CALLS = 3000
console = Console()


def interleaved_latency(model_dir: Path, m: Manifest) -> dict[str, dict[str, float]]:
    """p50/p99 (µs) of one-row session.run per variant, alternating calls."""
    x = np.asarray(m.baseline, dtype=np.float32).reshape((1, *m.input.shape))
    sessions = {k: session(model_dir / v.file) for k, v in m.variants.items()}
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(100):
        for s in sessions.values():
            s.run(None, {m.input.name: x})
    for _ in range(CALLS):
        for k, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, {m.input.name: x})
            times[k].append((time.perf_counter() - t0) * 1e6)
    return {k: {"p50_us": percentile(v, 50), "p99_us": percentile(v, 99)} for k, v in times.items()}


def quality(name: str, model_dir: Path) -> dict[str, dict[str, float]]:
    """Recomputed metrics, grouped by precision ('fp32' for unsuffixed keys)."""
    try:
        metrics = tasks.evaluate(name)(model_dir, data_dir_from_env(os.environ))
    except DatasetMissing as e:
        console.print(f"[yellow]{name}: quality not measured ({e})[/]")
        return {}
    grouped: dict[str, dict[str, float]] = {"fp32": {}, "int8": {}}
    for key, value in metrics.items():
        for variant in ("fp32", "int8"):
            if key.endswith(f"_{variant}"):
                grouped[variant][key.removesuffix(f"_{variant}")] = value
                break
        else:
            grouped["fp32"][key] = value
    return grouped


def bench() -> dict[str, Any]:
    models: dict[str, Any] = {}
    for path in sorted(shipped_models_dir().glob(f"*/{MANIFEST_FILE}")):
        model_dir = path.parent
        m = load_manifest(model_dir)
        console.print(f"[bold]{m.name}[/]: timing fp32 and int8, recomputing quality ...")
        lat = interleaved_latency(model_dir, m)
        q = quality(m.name, model_dir)
        models[m.name] = {
            "served": next(k for k, v in m.variants.items() if v.file == m.file),
            "variants": {
                k: {"size_bytes": v.size_bytes, **lat[k], "quality": q.get(k, {})}
                for k, v in m.variants.items()
            },
        }
    return {"machine": machine_info(), "models": models}


def render(res: dict[str, Any]) -> tuple[Table, str]:
    headers = ["model", "variant", "served", "size (kB)", "p50 µs", "p99 µs", "quality"]
    rows = []
    for name, info in res["models"].items():
        for variant, v in info["variants"].items():
            # The first two recomputed metrics (each task's headline ones come first).
            shown = list(v["quality"].items())[:2]
            qual = ", ".join(f"{k} {val:.4g}" for k, val in shown) or "-"
            rows.append(
                (
                    name,
                    variant,
                    "yes" if info["served"] == variant else "",
                    f"{v['size_bytes'] / 1024:.1f}",
                    f"{v['p50_us']:.1f}",
                    f"{v['p99_us']:.1f}",
                    qual,
                )
            )
    table = Table(title="fp32 vs int8 per model")
    for h in headers:
        table.add_column(h)
    for row in rows:
        table.add_row(*row)
    mach = res["machine"]
    md = (
        f"# fp32 vs int8 per model\n\nMachine: {mach['cpu']}, {mach['cores']} cores, "
        f"Python {mach['python']}; {mach['date']}. One row per `session.run`, one thread, "
        f"{CALLS} interleaved calls per variant; quality recomputed from the artifacts.\n\n"
        + markdown_table(headers, rows)
    )
    return table, md


def main() -> int:
    res = bench()
    table, md = render(res)
    console.print(table)
    js, mdp = write("models", res, md)
    console.print(f"written: {js}, {mdp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
