"""Reference histograms of the training inputs, for drift monitoring in serving.

For every input feature, the training values (all rows, and for windowed inputs every
time step: ``x`` of shape ``(n, ..., n_features)`` is flattened to ``(-1, n_features)``)
are summarized as ``bins`` quantile bins: the interior edges are the quantiles at
``1/bins, 2/bins, ..., (bins-1)/bins`` (duplicates dropped, so a binary or constant
feature gets one or two bins), and the first and last bins are open-ended, so every
live value falls into some bin. Edges are rounded to :data:`DECIMALS` decimals first
and the probabilities are the training share per bin under those rounded edges, so the
stored histogram is exactly what serving recomputes. A value equal to an edge belongs
to the lower bin (``numpy.searchsorted(edges, v, side="left")``).

The inference service (``services/inference/drift.py``) counts live inputs in the same
bins and reports PSI and KS per feature. The result goes into the manifest's
``reference`` field (``models.manifest.FeatureReference``).

``python -m models.reference [task ...]`` backfills ``reference`` into the shipped
manifests (``models/artifacts/<task>/manifest.json``) from each task's training matrix,
built by the same torch-free loaders its ``train.py`` uses. It neither retrains nor
touches any ONNX file; the training recipes call :func:`reference_histograms` when they
write the manifest, so ``make models`` produces the same field.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from models.datasets import DatasetMissing, add_data_dir_argument, find_data_dir
from models.manifest import MANIFEST_FILE, FeatureReference, parse_manifest, shipped_models_dir

DEFAULT_BINS = 10
DECIMALS = 6


def bin_index(
    edges: npt.NDArray[np.float64], values: npt.NDArray[np.floating]
) -> npt.NDArray[np.intp]:
    """Bin of each value: 0 for ``<= edges[0]``, ``len(edges)`` for ``> edges[-1]``."""
    return np.searchsorted(edges, values, side="left")


def feature_histogram(
    values: npt.NDArray[np.floating], bins: int = DEFAULT_BINS
) -> FeatureReference:
    """Quantile edges (rounded, unique) and the share of ``values`` in each bin."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError("no values to build a reference histogram from")
    if not np.all(np.isfinite(v)):
        raise ValueError("reference values must be finite")
    qs = np.arange(1, bins) / bins
    edges = np.unique(np.round(np.quantile(v, qs), DECIMALS))
    counts = np.bincount(bin_index(edges, v), minlength=len(edges) + 1)
    probs = counts / v.size
    return FeatureReference(
        edges=tuple(float(e) for e in edges),
        probs=tuple(round(float(p), DECIMALS) for p in probs),
    )


def reference_histograms(
    x: npt.NDArray[np.floating], feature_names: Sequence[str], bins: int = DEFAULT_BINS
) -> dict[str, FeatureReference]:
    """Per-feature reference histograms of a training matrix ``(n, ..., n_features)``."""
    arr = np.asarray(x)
    if arr.ndim < 2 or arr.shape[-1] != len(feature_names):
        raise ValueError(
            f"x has shape {arr.shape}; the last dimension must be the {len(feature_names)} features"
        )
    flat = arr.reshape(-1, arr.shape[-1])
    return {name: feature_histogram(flat[:, j], bins) for j, name in enumerate(feature_names)}


# --- Backfill of the shipped manifests ---------------------------------------------------


def _occupancy(data_dir: Path | None) -> npt.NDArray[np.float32]:
    from models.datasets import load_occupancy  # noqa: PLC0415 - data only when backfilling
    from models.occupancy.data import build_features  # noqa: PLC0415

    return build_features(load_occupancy("train", data_dir))


def _comfort(data_dir: Path | None) -> npt.NDArray[np.float32]:
    from models.comfort.data import build_samples, load_appliances, split_masks  # noqa: PLC0415

    data = load_appliances(data_dir)
    samples = build_samples(data)
    return samples.take(split_masks(samples, data)["train"]).x


def _anomaly(data_dir: Path | None) -> npt.NDArray[np.float32]:
    from models.anomaly.data import load_appliances, split, window_inputs  # noqa: PLC0415

    data = load_appliances(data_dir)
    return window_inputs(data, *split(len(data)).train)


def _routine(data_dir: Path | None) -> npt.NDArray[np.float32]:
    from models.routine.data import build_dataset, load_kasteren  # noqa: PLC0415

    return build_dataset(load_kasteren(data_dir)).x


# The training matrix of each task from the data in a data directory, exactly as its
# train.py builds it.
TRAINING_INPUTS: dict[str, Callable[[Path | None], npt.NDArray[np.float32]]] = {
    "occupancy": _occupancy,
    "comfort": _comfort,
    "anomaly": _anomaly,
    "routine": _routine,
}


def backfill(model_dir: Path, x: npt.NDArray[np.floating], bins: int = DEFAULT_BINS) -> None:
    """Rewrite ``model_dir/manifest.json`` with ``reference`` computed from ``x``."""
    path = model_dir / MANIFEST_FILE
    manifest = parse_manifest(json.loads(path.read_text()), where=str(path))
    reference = reference_histograms(x, manifest.input.feature_names(), bins)
    path.write_text(dataclasses.replace(manifest, reference=reference).to_json())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Add drift reference histograms to manifests.")
    parser.add_argument("tasks", nargs="*", default=list(TRAINING_INPUTS))
    parser.add_argument("--models-dir", type=Path, default=shipped_models_dir())
    parser.add_argument("--bins", type=int, default=DEFAULT_BINS)
    add_data_dir_argument(parser)
    args = parser.parse_args(argv)
    data_dir = find_data_dir(args.data_dir)
    for task in args.tasks:
        if task not in TRAINING_INPUTS:
            print(f"unknown task {task!r}; known: {', '.join(TRAINING_INPUTS)}", file=sys.stderr)
            return 2
        try:
            x = TRAINING_INPUTS[task](data_dir)
        except DatasetMissing as e:
            print(f"{task}: cannot build the training inputs: {e}", file=sys.stderr)
            return 2
        backfill(args.models_dir / task, x, args.bins)
        print(f"{task}: reference from {x.shape[0]} training inputs {list(x.shape[1:])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
