"""Evaluate the shipped occupancy artifact on ``datatest.txt`` (torch-free).

``roost models evaluate occupancy`` prints these; the reproducibility test compares
them with the metrics recorded in the manifest. :func:`binary_metrics` is the metric
set the training recipe and the privacy-utility bench report.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import numpy.typing as npt
from rich.console import Console

from models.datasets import DatasetMissing, add_data_dir_argument, find_data_dir, load_occupancy
from models.export import run
from models.manifest import load_manifest, shipped_models_dir
from models.occupancy.data import build_features
from models.report import comparison_table

I64Array = npt.NDArray[np.int64]


def binary_metrics(y_true: I64Array, y_pred: I64Array) -> dict[str, float]:
    """Accuracy, and precision, recall and F1 of "occupied" (label 1)."""
    tp = int(np.sum((y_pred == 1) & (y_true == 1)))
    fp = int(np.sum((y_pred == 1) & (y_true == 0)))
    fn = int(np.sum((y_pred == 0) & (y_true == 1)))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": float(np.mean(y_pred == y_true)),
        "precision": precision,
        "recall": recall,
        "f1": f1,
    }


def evaluate(model_dir: Path, data_dir: Path | None) -> dict[str, float]:
    """Test accuracy of each shipped precision, keyed like the manifest's metrics, on
    the test split in ``data_dir`` (:func:`models.datasets.find_data_dir`)."""
    manifest = load_manifest(model_dir)
    data = load_occupancy("test", data_dir)
    x, y = build_features(data), data.occupancy
    out: dict[str, float] = {}
    for name, key in (("fp32", "test_accuracy"), ("int8", "test_accuracy_int8")):
        variant = manifest.variants[name]
        probs = run(model_dir / variant.file, x, manifest.input.name, manifest.output_name)
        out[key] = round(float(np.mean(probs.argmax(axis=1) == y)), 6)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Evaluate the occupancy model")
    parser.add_argument("--model-dir", type=Path, default=shipped_models_dir() / "occupancy")
    add_data_dir_argument(parser)
    args = parser.parse_args(argv)
    try:
        metrics = evaluate(args.model_dir, find_data_dir(args.data_dir))
    except DatasetMissing as e:
        Console(stderr=True).print(f"[red]cannot evaluate occupancy:[/] {e}")
        return 2
    table, ok = comparison_table(
        f"occupancy on datatest.txt ({args.model_dir})",
        metrics,
        load_manifest(args.model_dir).metrics,
    )
    Console().print(table)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
