"""Re-score the shipped routine model from its ONNX files (torch-free).

Run from the repository root::

    python -m models.routine.evaluate [--model-dir models/artifacts/routine]

Recomputes, with onnxruntime on every shipped variant, the metrics that need no
retraining: accuracy and macro-F1 on all days of the recording (``alldays_*``; the
shipped model was trained on these days, so they are in-sample) and the same on the
perturbed "other home" (``other_home_alldays_*``: 4 sensors fewer, the cupboards
merged into one, new ids; same model, no retraining). Training stores these values
in the manifest, so a drifted artifact or feature code shows up as a mismatch. The
cross-validated metrics need the fold models and are only reported from the manifest.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from rich.console import Console

from models.datasets import DatasetMissing, add_data_dir_argument, find_data_dir
from models.export import run
from models.manifest import ManifestError, load_manifest, shipped_models_dir
from models.report import comparison_table
from models.routine.data import (
    CLASSES,
    Dataset,
    build_dataset,
    load_kasteren,
    other_home,
)

NAME = "routine"
# Recomputed values must match the manifest this closely (same files, same code).
TOLERANCE = 1e-4

F32Array = npt.NDArray[np.float32]
I64Array = npt.NDArray[np.int64]


# --- Metrics ---------------------------------------------------------------------------


def confusion(y_true: I64Array, y_pred: I64Array, n: int = len(CLASSES)) -> I64Array:
    """Counts ``[true, predicted]``."""
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def report(y_true: I64Array, y_pred: I64Array) -> dict[str, float]:
    """accuracy, macro_f1 and per-class precision_/recall_/f1_/support_<class>.

    Macro-F1 averages the F1 of all classes (a class never predicted scores 0).
    """
    cm = confusion(y_true, y_pred)
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    actual = cm.sum(axis=1).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    out = {
        "accuracy": float(tp.sum() / max(1.0, cm.sum())),
        "macro_f1": float(f1.mean()),
    }
    for i, c in enumerate(CLASSES):
        out[f"precision_{c}"] = float(precision[i])
        out[f"recall_{c}"] = float(recall[i])
        out[f"f1_{c}"] = float(f1[i])
        out[f"support_{c}"] = float(actual[i])
    return out


def predict(path: Path, x: F32Array, input_name: str, output_name: str) -> I64Array:
    probs = run(path, x, input_name, output_name)
    return np.asarray(probs.argmax(axis=1), dtype=np.int64)


def plot_confusion(
    matrices: Sequence[tuple[str, I64Array]], path: Path, labels: Sequence[str] = CLASSES
) -> None:
    """Row-normalized confusion matrices side by side, as a PNG (matplotlib Agg)."""
    import matplotlib  # noqa: PLC0415 - plotting is only needed when training

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(1, len(matrices), figsize=(6.2 * len(matrices), 5.6), squeeze=False)
    for ax, (title, cm) in zip(axes[0], matrices, strict=True):
        rows = cm.sum(axis=1, keepdims=True).astype(np.float64)
        norm = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
        ax.imshow(norm, vmin=0.0, vmax=1.0, cmap="Blues")
        for i in range(len(labels)):
            for j in range(len(labels)):
                if cm[i, j]:
                    ax.text(
                        j,
                        i,
                        f"{norm[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black",
                    )
        ticks = np.arange(len(labels))
        ax.set_xticks(ticks, [str(x) for x in labels], rotation=45, ha="right")
        ax.set_yticks(ticks, [f"{x} ({int(n)})" for x, n in zip(labels, rows[:, 0], strict=True)])
        ax.set_xlabel("predicted")
        ax.set_ylabel("annotated (slices)")
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


# --- Re-scoring the artifact -----------------------------------------------------------


def score_variants(
    model_dir: Path,
    files: Mapping[str, str],
    home: Dataset,
    other: Dataset,
    *,
    input_name: str = "features",
    output_name: str = "probabilities",
) -> dict[str, float]:
    """alldays_* and other_home_alldays_* accuracy/macro-F1 of each variant file."""
    out: dict[str, float] = {}
    for variant, file in sorted(files.items()):
        for prefix, ds in (("alldays", home), ("other_home_alldays", other)):
            r = report(ds.y, predict(model_dir / file, ds.x, input_name, output_name))
            out[f"{prefix}_accuracy_{variant}"] = round(r["accuracy"], 6)
            out[f"{prefix}_macro_f1_{variant}"] = round(r["macro_f1"], 6)
    return out


def evaluate(model_dir: Path, data_dir: Path | None) -> dict[str, float]:
    """Recompute the no-retraining metrics of the artifact in ``model_dir``.

    Raises :class:`models.datasets.DatasetMissing` without the data in ``data_dir``
    and :class:`models.manifest.ManifestError` for a broken artifact.
    """
    manifest = load_manifest(model_dir)
    data = load_kasteren(data_dir)
    files = {k: v.file for k, v in manifest.variants.items()} or {"served": manifest.file}
    return score_variants(
        model_dir,
        files,
        build_dataset(data),
        build_dataset(data, other_home(data)),
        input_name=manifest.input.name,
        output_name=manifest.output_name,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Re-score the shipped routine model.")
    parser.add_argument("--model-dir", type=Path, default=shipped_models_dir() / NAME)
    add_data_dir_argument(parser)
    args = parser.parse_args(argv)
    console = Console()
    try:
        manifest = load_manifest(args.model_dir)
        metrics = evaluate(args.model_dir, find_data_dir(args.data_dir))
    except DatasetMissing as e:
        console.print(f"[red]error:[/] van Kasteren data not available: {e}")
        return 2
    except ManifestError as e:
        console.print(f"[red]error:[/] {e}")
        return 2
    table, ok = comparison_table(
        f"{manifest.name} {manifest.version} ({args.model_dir})", metrics, manifest.metrics
    )
    for key in ("cv_macro_f1", "cv_accuracy", "baseline_time_of_day_macro_f1"):
        if key in manifest.metrics:
            table.add_row(f"{key} (manifest only)", "—", f"{manifest.metrics[key]:.4f}", "")
    console.print(table)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
