"""The model tasks Roost ships, and where their recipes live.

Each task is a package ``models/<task>/``: ``net`` (the torch module), ``train`` (the
recipe and its CLI, ``train.main(argv)``), ``card`` (the model card) and the torch-free
``evaluate.evaluate(model_dir, data_dir)`` / ``evaluate.main(argv)``; it ships its
artifacts in ``models/artifacts/<task>/``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import cast

TASKS = ("occupancy", "comfort", "anomaly", "routine")


def available() -> list[str]:
    """Tasks whose recipe is present in this checkout."""
    here = Path(__file__).resolve().parent
    return [t for t in TASKS if (here / t / "train.py").is_file()]


def _entry(task: str, module: str, name: str) -> Callable[..., object]:
    if task not in TASKS:
        raise KeyError(f"unknown task '{task}'; known: {', '.join(TASKS)}")
    mod = importlib.import_module(f"models.{task}.{module}")
    return cast(Callable[..., object], getattr(mod, name))


def train_main(task: str) -> Callable[[list[str] | None], int]:
    return cast(Callable[[list[str] | None], int], _entry(task, "train", "main"))


def evaluate_main(task: str) -> Callable[[list[str] | None], int]:
    return cast(Callable[[list[str] | None], int], _entry(task, "evaluate", "main"))


def evaluate(task: str) -> Callable[[Path, Path | None], dict[str, float]]:
    """``evaluate(model_dir, data_dir)`` of the task (``data_dir``: see
    :func:`models.datasets.find_data_dir`)."""
    return cast(
        Callable[[Path, Path | None], dict[str, float]], _entry(task, "evaluate", "evaluate")
    )
