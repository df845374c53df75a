"""van Kasteren loading helpers (``models.routine.data``): 60 s slice labels and
leave-days-out folds. Torch-free.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from models.routine.data import CLASSES, Interval, KasterenData, labels, leave_days_out_folds

T0 = datetime(2024, 1, 1, 0, 0, tzinfo=UTC).timestamp()


def test_labels_shortest_overlapping_annotation_wins() -> None:
    night = Interval(T0, T0 + 8 * 3600, "go to bed")
    toilet = Interval(T0 + 3 * 3600 + 10, T0 + 3 * 3600 + 50, "use toilet")
    drink = Interval(T0 + 9 * 3600 + 30, T0 + 9 * 3600 + 40, "get drink")
    data = KasterenData(sensors=(), activities=(night, toilet, drink), sha256="")
    starts = T0 + np.arange(0.0, 10 * 3600.0, 60.0)
    y = labels(data, starts)
    name = [CLASSES[int(k)] for k in y]
    assert name[0] == name[179] == name[181] == name[479] == "asleep"
    assert name[180] == "toilet"  # 03:00 slice, nested in the night
    assert name[480] == "idle"
    assert name[540] == "drink"
    assert name[541] == "idle"


def test_leave_days_out_folds_hold_whole_days() -> None:
    days = np.repeat(np.arange(28), 1440)
    folds = leave_days_out_folds(days, 7)
    assert sorted(set(folds.tolist())) == list(range(7))
    for d in range(28):
        assert len(set(folds[days == d].tolist())) == 1
    with pytest.raises(ValueError):
        leave_days_out_folds(days, 1)
