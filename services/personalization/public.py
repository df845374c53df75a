"""Public base-task data: replay rows against forgetting, and the forgetting measurement.

The chosen fine-tuning recipe (docs/personalization.md) mixes *public* base-training rows
into the Poisson-sampled training set (replay) and measures forgetting on public data
of the base task. Public means shipped with, or next to, Roost (``../shared/data`` or
the configured ``public_data_dir``): no household value is involved, so replay rows
do not change what the DP accounting protects (see ``finetune.dp_finetune``) and the
forgetting metric is not a statistic of the household.

* occupancy: replay from ``datatraining.txt`` (the base's training set); forgetting is
  accuracy on ``datatest.txt`` (held out from the base model).
* routine: the van Kasteren apartment in its recorded layout, for both replay and the
  forgetting metric (the shipped model was trained on all its days, so the metric is
  in-sample: it measures "still works on the base home", not generalisation).

When the data is not on this hub, :func:`load` returns None: the job trains with
distillation only and reports no forgetting metric (it says so in its message).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

F32Array = npt.NDArray[np.float32]
I64Array = npt.NDArray[np.int64]


@dataclass(frozen=True)
class PublicData:
    """Public rows of a task with labels indexed by the model's output labels."""

    x_replay: F32Array
    y_replay: I64Array
    x_eval: F32Array
    y_eval: I64Array
    description: str


def _relabel(y: I64Array, names: Sequence[str], labels: Sequence[str]) -> I64Array | None:
    index = {label: i for i, label in enumerate(labels)}
    if any(n not in index for n in names):
        return None
    table = np.asarray([index[n] for n in names], dtype=np.int64)
    out: I64Array = table[y]
    return out


def load(
    task: str, labels: Sequence[str], shape: Sequence[int], configured: Path | None
) -> PublicData | None:
    """The task's public data (in ``configured``, or the default data directory) for a
    model with these output ``labels`` and input ``shape``, or None if it is not
    available or does not fit the model."""
    from models.datasets import DatasetMissing, find_data_dir  # noqa: PLC0415

    try:
        data = _load(task, find_data_dir(configured))
    except (DatasetMissing, FileNotFoundError, OSError, ValueError):
        return None
    if data is None:
        return None
    x_rep, y_rep, x_ev, y_ev, names, description = data
    if tuple(x_rep.shape[1:]) != tuple(shape) or tuple(x_ev.shape[1:]) != tuple(shape):
        return None
    yr = _relabel(y_rep, names, labels)
    ye = _relabel(y_ev, names, labels)
    if yr is None or ye is None:
        return None
    return PublicData(x_rep, yr, x_ev, ye, description)


def _load(
    task: str, data_dir: Path | None
) -> tuple[F32Array, I64Array, F32Array, I64Array, tuple[str, ...], str] | None:
    if task == "occupancy":
        from models.datasets import load_occupancy  # noqa: PLC0415
        from models.occupancy.data import build_features  # noqa: PLC0415

        train, test = load_occupancy("train", data_dir), load_occupancy("test", data_dir)
        return (
            build_features(train),
            train.occupancy.astype(np.int64),
            build_features(test),
            test.occupancy.astype(np.int64),
            ("vacant", "occupied"),
            "accuracy on UCI datatest.txt (held out from the base model)",
        )
    if task == "routine":
        from models.routine.data import CLASSES, build_dataset, load_kasteren  # noqa: PLC0415

        home = build_dataset(load_kasteren(data_dir))
        x, y = home.x.astype(np.float32), home.y.astype(np.int64)
        return (
            x,
            y,
            x,
            y,
            tuple(CLASSES),
            "accuracy on the van Kasteren apartment, recorded layout (in-sample for the base)",
        )
    return None


def replay_rows(
    task: str, labels: Sequence[str], shape: Sequence[int], configured: Path | None
) -> int:
    """How many public replay rows the task has for this model (0: none). Only the
    count is cached: the service process does not keep the arrays."""
    return _replay_rows(task, tuple(labels), tuple(int(d) for d in shape), configured)


@functools.lru_cache(maxsize=16)
def _replay_rows(
    task: str, labels: tuple[str, ...], shape: tuple[int, ...], configured: Path | None
) -> int:
    data = load(task, labels, shape, configured)
    return 0 if data is None else len(data.y_replay)


def replay_subset(data: PublicData, n: int, seed: int) -> tuple[F32Array, I64Array]:
    """``n`` public rows drawn without replacement (``n`` <= the rows available)."""
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(data.y_replay), size=n, replace=False))
    return data.x_replay[idx], data.y_replay[idx]
