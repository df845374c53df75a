"""Recompute the comfort model's headline test metrics from the shipped ONNX files.

Torch-free: runs every shipped variant in onnxruntime on the test days of UCI
Appliances (inputs built through the hub's FeatureWindow, see ``data``) and prints
them next to the values recorded in the manifest. Training computes the manifest's
metrics with these same functions. Run from the repository root::

    python -m models.comfort.evaluate [--model-dir models/artifacts/comfort]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from rich.console import Console

from models.comfort.data import (
    AppliancesData,
    F32Array,
    Samples,
    build_samples,
    load_appliances,
    mae,
    persistence,
    split_bounds,
    split_masks,
)
from models.comfort.spec import HORIZON_STEPS
from models.datasets import DatasetMissing, add_data_dir_argument, find_data_dir
from models.export import session
from models.manifest import ManifestError, load_manifest, shipped_models_dir
from models.report import comparison_table

NAME = "comfort"
HORIZON_MINUTES = tuple(int(h * 10) for h in HORIZON_STEPS)  # (30, 60)
# Manifest metrics are rounded to this many decimals (evaluate rounds the same way).
DECIMALS = 6


def evaluation_samples(data: AppliancesData) -> Samples:
    """The test days' samples (forecast origin and +60 min target both in the test days)."""
    samples = build_samples(data, since=split_bounds(data)["test"][0])
    return samples.take(split_masks(samples, data)["test"])


def predict(
    path: Path, x: F32Array, input_name: str, output_name: str, *, row_by_row: bool
) -> F32Array:
    """Run the model on ``x``: one batch, or one row per ``session.run`` as ``Predict`` does.

    Row by row matters for int8: dynamic quantization takes each activation's scale from
    the whole batch, so a batched int8 result depends on the batch's other rows. An fp32
    result does not (up to float rounding), so fp32 runs as one batch.
    """
    sess = session(path)
    if not row_by_row:
        (batch,) = sess.run([output_name], {input_name: x})
        return np.asarray(batch, dtype=np.float32)
    out = np.empty((len(x), len(HORIZON_STEPS)), dtype=np.float32)
    for i in range(len(x)):
        (row,) = sess.run([output_name], {input_name: x[i : i + 1]})
        out[i] = row[0]
    return out


def mae_metrics(prefix: str, suffix: str, pred: F32Array, y: F32Array) -> dict[str, float]:
    """``{prefix}_mae_30{suffix}``, ``{prefix}_mae_60{suffix}``: MAE in degC per horizon."""
    values = mae(pred, y)
    return {
        f"{prefix}_mae_{minutes}{suffix}": round(float(v), DECIMALS)
        for minutes, v in zip(HORIZON_MINUTES, values, strict=True)
    }


def variant_metrics(
    model_dir: Path, files: dict[str, str], test: Samples, input_name: str, output_name: str
) -> tuple[dict[str, float], dict[str, F32Array]]:
    """Test MAE per variant (``test_mae_30_fp32``, ...) and the predictions."""
    metrics: dict[str, float] = {}
    preds: dict[str, F32Array] = {}
    for variant, file in files.items():
        preds[variant] = predict(
            model_dir / file, test.x, input_name, output_name, row_by_row=variant != "fp32"
        )
        metrics |= mae_metrics("test", f"_{variant}", preds[variant], test.y)
    return metrics, preds


def evaluate(
    model_dir: Path, data_dir: Path | None, data: AppliancesData | None = None
) -> dict[str, float]:
    """The manifest's headline test metrics, recomputed from the shipped ONNX files:
    ``test_mae_{30,60}_{fp32,int8}`` (degC).

    ``data`` (default: loaded from ``data_dir``) saves a reload.
    """
    manifest = load_manifest(model_dir)
    if data is None:
        data = load_appliances(data_dir)
    if manifest.training_data_sha256 and data.sha256 != manifest.training_data_sha256:
        raise ManifestError(
            f"{model_dir}: trained on data sha256 {manifest.training_data_sha256}, "
            f"this data is {data.sha256}"
        )
    test = evaluation_samples(data)
    files = {name: v.file for name, v in manifest.variants.items()} or {"fp32": manifest.file}
    metrics, _ = variant_metrics(model_dir, files, test, manifest.input.name, manifest.output_name)
    return metrics


def persistence_metrics(test: Samples) -> dict[str, float]:
    """The persistence baseline on the test samples (``persistence_mae_{30,60}``)."""
    return mae_metrics("persistence", "", persistence(test), test.y) | {
        "test_samples": float(len(test))
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model-dir", type=Path, default=shipped_models_dir() / NAME)
    add_data_dir_argument(parser)
    args = parser.parse_args(argv)
    console = Console()
    data_dir = find_data_dir(args.data_dir)
    try:
        manifest = load_manifest(args.model_dir)
        data = load_appliances(data_dir)
        metrics = evaluate(args.model_dir, data_dir, data) | persistence_metrics(
            evaluation_samples(data)
        )
    except DatasetMissing as e:
        Console(stderr=True).print(f"[red]cannot evaluate {NAME}:[/] {e}")
        return 2
    except ManifestError as e:
        Console(stderr=True).print(f"[red]cannot evaluate {NAME}:[/] {e}")
        return 2
    table, ok = comparison_table(
        f"{manifest.name} {manifest.version}: test days, MAE (degC)", metrics, manifest.metrics
    )
    served = next((k for k, v in manifest.variants.items() if v.file == manifest.file), "?")
    console.print(table)
    console.print(f"served variant: {served} ({manifest.file})")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
