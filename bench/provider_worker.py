"""Time ``session.run`` of the shipped models on one execution provider (a bench child).

Run by :mod:`bench.providers` with the python of the venv whose onnxruntime wheel is under
test (``PYTHONPATH`` = the repository): it needs only numpy and onnxruntime, imported
through ``models.onnx_runtime`` so telemetry is off. Prints one JSON object:
per (model, batch), the median ``session.run`` time over ``--seconds`` of calls, and the outputs on a
fixed input (for the parity check).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from models.onnx_runtime import open_session, ort, provider_of


def time_runs(
    session: ort.InferenceSession, feeds: dict[str, np.ndarray], seconds: float
) -> tuple[float, int]:
    """Median seconds of back-to-back calls for ``seconds`` (at least 20), and how many."""
    times: list[float] = []
    end = time.perf_counter() + seconds
    while len(times) < 20 or time.perf_counter() < end:
        t0 = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), len(times)


def measure(
    model_dir: Path, provider: str, batches: list[int], seconds: float
) -> dict[str, object]:
    manifest = json.loads((model_dir / "manifest.json").read_text())
    session = open_session(model_dir / manifest["file"], providers=[provider])
    inp = session.get_inputs()[0]
    rest = [int(d) for d in inp.shape[1:]]  # the batch axis is dynamic
    rng = np.random.default_rng(0)
    out: dict[str, object] = {"provider": provider_of(session), "timings": {}}
    for batch in batches:
        x = rng.normal(size=(batch, *rest)).astype(np.float32)
        for _ in range(50):  # warm-up: compilation, caches
            session.run(None, {inp.name: x})
        median, calls = time_runs(session, {inp.name: x}, seconds)
        out["timings"][str(batch)] = {"median_s": median, "calls": calls}  # type: ignore[index]
    parity = rng.normal(size=(16, *rest)).astype(np.float32)
    out["outputs"] = np.asarray(session.run(None, {inp.name: parity})[0]).tolist()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--provider", required=True)
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--seconds", type=float, default=2.0, help="per model and batch")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    result = {
        "runtime": f"onnxruntime {ort.__version__}",
        "python": sys.version.split()[0],
        "models": {
            d.name: measure(d, args.provider, batches, args.seconds)
            for d in sorted(args.models.iterdir())
            if (d / "manifest.json").is_file()
        },
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
