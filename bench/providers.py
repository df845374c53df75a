"""onnxruntime execution providers side by side: every provider this machine can run.

The stock ``onnxruntime`` wheel (the serving venv) has the CPU provider. Intel hubs get
OpenVINO through the ``onnxruntime-openvino`` wheel, which *replaces* ``onnxruntime``, so
it lives in its own venv (``.venv-openvino``, created here on first use from PyPI). The
same worker (:mod:`bench.provider_worker`) times ``session.run`` of the four shipped
models at batch 1 and 64 in each configuration, repeats interleaved so machine noise
hits them alike, and checks that the outputs agree with the serving CPU provider.

Reported per model and batch: the median over repeats of each repeat's median call time,
the spread (min-max of the repeat medians), and the ratio to the serving venv's CPU
provider in the same run. Written to ``bench/results/providers.{json,md}`` with the
machine. (OpenVINO runs on this machine's CPU; an NPU or iGPU needs the matching
``device_type`` and the hardware.)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import track

from bench.machine import machine_info
from bench.report import markdown_table, write
from models.manifest import shipped_models_dir

ROOT = Path(__file__).resolve().parents[1]
OPENVINO_VENV = ROOT / ".venv-openvino"
OPENVINO_REQUIREMENTS = ("onnxruntime-openvino==1.24.1", "numpy==2.4.6")
console = Console()


@dataclass(frozen=True)
class Config:
    label: str
    python: Path
    provider: str


def ensure_openvino_venv() -> Path | None:
    """The OpenVINO venv's python, created on first use; None if PyPI cannot provide it."""
    python = OPENVINO_VENV / "bin" / "python"
    if python.exists():
        return python
    console.print(f"creating {OPENVINO_VENV.name} ({', '.join(OPENVINO_REQUIREMENTS)}) ...")
    try:
        subprocess.run([sys.executable, "-m", "venv", str(OPENVINO_VENV)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q", *OPENVINO_REQUIREMENTS]
        subprocess.run(pip, check=True)
    except subprocess.CalledProcessError as e:
        console.print(f"[yellow]OpenVINO unavailable here ({e}); measuring CPU only[/]")
        return None
    return python


def run_worker(config: Config, seconds: float) -> dict[str, Any]:
    argv = [
        str(config.python),
        "-m",
        "bench.provider_worker",
        "--models",
        str(shipped_models_dir()),
    ]
    argv += ["--provider", config.provider, "--seconds", str(seconds)]
    out = subprocess.run(
        argv,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def summarize(configs: list[Config], runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    baseline = configs[0].label
    rows = []
    models = sorted(runs[baseline][0]["models"])
    for model in models:
        reference = np.asarray(runs[baseline][0]["models"][model]["outputs"])
        for batch in sorted(runs[baseline][0]["models"][model]["timings"], key=int):
            base = statistics.median(
                r["models"][model]["timings"][batch]["median_s"] for r in runs[baseline]
            )
            for c in configs:
                medians = [r["models"][model]["timings"][batch]["median_s"] for r in runs[c.label]]
                first = runs[c.label][0]
                outputs = np.asarray(first["models"][model]["outputs"])
                rows.append(
                    {
                        "model": model,
                        "batch": int(batch),
                        "config": c.label,
                        "runtime": first["runtime"],
                        "provider": first["models"][model]["provider"],
                        "median_us": statistics.median(medians) * 1e6,
                        "min_us": min(medians) * 1e6,
                        "max_us": max(medians) * 1e6,
                        "ratio": statistics.median(medians) / base,
                        "max_abs_diff": float(np.max(np.abs(outputs - reference))),
                        "repeats": len(medians),
                    }
                )
    return rows


def render(
    rows: list[dict[str, Any]], machine: dict[str, Any], seconds: float, load: list[float]
) -> str:
    table = markdown_table(
        [
            "model",
            "batch",
            "configuration (provider actually used)",
            "session.run p50",
            "spread (repeat medians)",
            "vs serving CPU",
            "max |Δ output|",
        ],
        [
            (
                r["model"],
                r["batch"],
                f"{r['config']} ({r['provider']}, {r['runtime']})",
                f"{r['median_us']:.1f} µs",
                f"{r['min_us']:.1f}-{r['max_us']:.1f} µs",
                f"{r['ratio']:.2f}x",
                f"{r['max_abs_diff']:.1e}",
            )
            for r in rows
        ],
    )
    return (
        "# Execution providers, side by side\n\n"
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['date']}; "
        f"1-min load average {load[0]:.1f} at the start, {load[1]:.1f} at the end. "
        f"Each figure is the median over {rows[0]['repeats']} interleaved repeats of the median "
        f"of {seconds:.0f} s of back-to-back calls; the ratio is against the serving venv's "
        "CPU provider in the same run. `python -m bench.providers`.\n\n" + table + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0, help="per model, batch, repeat")
    args = parser.parse_args()
    configs = [Config("serving venv", Path(sys.executable), "CPUExecutionProvider")]
    ov = ensure_openvino_venv()
    if ov is not None:
        configs += [
            Config("openvino venv, CPU provider", ov, "CPUExecutionProvider"),
            Config("openvino venv, OpenVINO on CPU", ov, "OpenVINOExecutionProvider"),
        ]
    runs: dict[str, list[dict[str, Any]]] = {c.label: [] for c in configs}
    load = [os.getloadavg()[0]]
    steps = [(r, c) for r in range(args.repeats) for c in configs]
    for _, config in track(steps, description="timing providers", console=console):
        runs[config.label].append(run_worker(config, args.seconds))
    load.append(os.getloadavg()[0])
    rows = summarize(configs, runs)
    machine = machine_info()
    markdown = render(rows, machine, args.seconds, load)
    console.print(markdown)
    data = {"machine": machine, "seconds": args.seconds, "load_average": load, "rows": rows}
    write("providers", data, markdown)


if __name__ == "__main__":
    main()
