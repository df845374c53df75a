"""The default canary set of a release (``roost models publish``): held-out rows the
model was not trained on, with their **true** labels.

The expected outputs come from the data set, never from the model being published, so
a model that loads, fits the schema and answers confidently but wrongly (inverted
labels, a broken export) fails its own canary at stage time on every hub
(``services/update/candidate_check.py``). The rows are a seeded, class-balanced sample
of the task's test split, built by the same loaders its ``train.py`` evaluates on
(``HELD_OUT``); ``min_agreement`` is the test accuracy the manifest records for that
split minus :data:`MARGIN` (the sample is small and balanced, so it scatters around the
recorded figure), never below :data:`FLOOR`.

Only classifiers with a held-out test split get one (occupancy, whose UCI test file
train.py never sees); routine (trained on every day of its one home, cross-validated), the
regressors and unknown tasks have to publish with ``--no-canary`` (``CanaryUnavailable``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from models.canary import attach_canary
from models.datasets import DatasetMissing
from models.manifest import MANIFEST_FILE, Manifest, parse_manifest

ROWS_PER_LABEL: Final = 25
MARGIN: Final = 0.15
FLOOR: Final = 0.5
# The manifest's metric recorded on the same held-out split, per task.
ACCURACY_METRIC: Final = {"occupancy": "test_accuracy"}

HeldOut = tuple[npt.NDArray[np.float32], list[str]]


class CanaryUnavailable(Exception):
    """No default canary can be built (no held-out data, or not a known classifier)."""


def _occupancy(data_dir: Path | None, labels: tuple[str, ...]) -> HeldOut:
    from models.datasets import load_occupancy  # noqa: PLC0415 - data only when publishing
    from models.occupancy.data import build_features  # noqa: PLC0415

    data = load_occupancy("test", data_dir)
    return build_features(data), [labels[int(y)] for y in data.occupancy]


# The held-out inputs of each task and their true labels, as its train.py builds them.
HELD_OUT: dict[str, Callable[[Path | None, tuple[str, ...]], HeldOut]] = {
    "occupancy": _occupancy,
}


def _balanced(labels: list[str], per_label: int, seed: int) -> list[int]:
    """Up to ``per_label`` row indexes of each label, drawn with ``seed``, in row order."""
    rng = np.random.default_rng(seed)
    picked: list[int] = []
    for label in sorted(set(labels)):
        rows = [i for i, y in enumerate(labels) if y == label]
        picked += rng.choice(rows, size=min(per_label, len(rows)), replace=False).tolist()
    return sorted(picked)


def min_agreement(manifest: Manifest) -> float:
    """The recorded held-out accuracy minus MARGIN, at least FLOOR."""
    metric = ACCURACY_METRIC.get(manifest.name, "")
    recorded = manifest.metrics.get(metric)
    if recorded is None:
        raise CanaryUnavailable(
            f"{manifest.name}: the manifest records no {metric or 'held-out accuracy'}"
        )
    return round(max(FLOOR, float(recorded) - MARGIN), 4)


def attach_held_out_canary(
    model_dir: Path, data_dir: Path | None, *, per_label: int = ROWS_PER_LABEL, seed: int = 0
) -> Manifest:
    """Write the default canary set into ``model_dir`` (a copy the publisher bundles) and
    name it in its manifest; CanaryUnavailable when it cannot be built."""
    path = model_dir / MANIFEST_FILE
    manifest = parse_manifest(json.loads(path.read_text()), where=str(path))
    if manifest.task_kind != "classification" or manifest.name not in HELD_OUT:
        raise CanaryUnavailable(
            f"{manifest.name}: no default canary for a {manifest.task_kind} model"
            f" (built for {', '.join(HELD_OUT)} only)"
        )
    agreement = min_agreement(manifest)
    try:
        x, labels = HELD_OUT[manifest.name](data_dir, manifest.output_labels)
    except DatasetMissing as e:
        raise CanaryUnavailable(f"{manifest.name}: no held-out data: {e}") from None
    rows = _balanced(labels, per_label, seed)
    flat = x.reshape(len(x), -1)
    return attach_canary(
        model_dir,
        [flat[i].tolist() for i in rows],
        [labels[i] for i in rows],
        min_agreement=agreement,
    )
