"""Scoring the anomaly artifact on injected faults (``models.anomaly.evaluate``).

Floors on the served model's test-period metrics; shipped 1.0.0 scores recall
stuck_on 0.90, surge 0.40, dropout 1.00, frozen 0.95, overall precision 0.94, 0.15
false alarms/day:

- recall: stuck_on >= 0.85, surge >= 0.30 (a 3-6x surge on an ordinary reading looks
  like a kettle), dropout >= 0.95, frozen >= 0.90;
- precision overall >= 0.85; false alarms on the clean test period <= 0.5 per day;
- expected-energy MAE below the last-reading (persistence) baseline.
"""

from __future__ import annotations

import numpy as np

from models.anomaly.evaluate import alert_episodes, calibrate_threshold, within_tolerance
from models.manifest import Manifest

RECALL_FLOORS = {"stuck_on": 0.85, "surge": 0.30, "dropout": 0.95, "frozen": 0.90}
PRECISION_OVERALL_FLOOR = 0.85
FALSE_ALARMS_PER_DAY_CEILING = 0.5


def test_alert_episodes_merge_alerts_within_the_hour() -> None:
    alert = np.zeros(40, dtype=bool)
    alert[[2, 3, 8, 20, 30, 31]] = True  # 3 -> 8 is 5 steps apart; 8 -> 20 is 12
    assert alert_episodes(alert) == [(2, 9), (20, 21), (30, 32)]
    assert alert_episodes(np.zeros(5, dtype=bool)) == []


def test_calibrated_threshold_meets_the_budget() -> None:
    rng = np.random.default_rng(0)
    score = rng.normal(size=14_400)  # 100 days
    for budget in (0.05, 0.2, 1.0):
        t = calibrate_threshold(score, budget)
        assert t not in score  # strictly between observed values
        assert len(alert_episodes(score >= t)) / 100 <= budget
    assert calibrate_threshold(score, 0.0) > score.max()


def test_evaluate_reproduces_manifest(manifest: Manifest, evaluated: dict[str, float]) -> None:
    assert evaluated  # every key is a manifest metric it reproduces
    for key, value in evaluated.items():
        assert key in manifest.metrics, key
        assert within_tolerance(value, manifest.metrics[key]), (key, value, manifest.metrics[key])
    for variant in manifest.variants:
        assert f"recall_overall_{variant}" in evaluated


def test_served_model_meets_floors(manifest: Manifest, evaluated: dict[str, float]) -> None:
    served = next(v for v, info in manifest.variants.items() if info.file == manifest.file)
    for kind, floor in RECALL_FLOORS.items():
        assert evaluated[f"recall_{kind}_{served}"] >= floor, kind
    assert evaluated[f"precision_overall_{served}"] >= PRECISION_OVERALL_FLOOR
    assert evaluated[f"false_alarms_per_day_{served}"] <= FALSE_ALARMS_PER_DAY_CEILING
    assert evaluated[f"test_mae_wh_{served}"] < manifest.metrics["test_mae_wh_persistence"]
