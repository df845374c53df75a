"""Occupancy metrics (``models.occupancy.evaluate``)."""

from __future__ import annotations

import numpy as np
import pytest

from models.occupancy.evaluate import binary_metrics


def test_binary_metrics_score_the_occupied_label() -> None:
    y_true = np.array([1, 1, 1, 0, 0, 0], dtype=np.int64)
    y_pred = np.array([1, 1, 0, 1, 0, 0], dtype=np.int64)
    m = binary_metrics(y_true, y_pred)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)


def test_binary_metrics_without_any_occupied_prediction() -> None:
    m = binary_metrics(np.array([1, 0], dtype=np.int64), np.array([0, 0], dtype=np.int64))
    assert m == {"accuracy": 0.5, "precision": 0.0, "recall": 0.0, "f1": 0.0}
