"""Test-day MAE of the comfort artifact (``models.comfort.evaluate``), recomputed from
the ONNX files, against the manifest and the persistence baseline.
"""

from __future__ import annotations

from models.comfort.data import Samples
from models.comfort.evaluate import persistence_metrics
from models.manifest import Manifest
from models.report import within

# The model must cut the persistence MAE by at least this fraction at both horizons.
MIN_GAIN_OVER_PERSISTENCE = 0.10


def test_evaluate_reproduces_manifest(manifest: Manifest, recomputed: dict[str, float]) -> None:
    for key in ("test_mae_30_fp32", "test_mae_60_fp32", "test_mae_30_int8", "test_mae_60_int8"):
        assert key in recomputed
    for key, value in recomputed.items():
        assert within(value, manifest.metrics[key], key), (key, value)


def test_beats_persistence(
    manifest: Manifest, test_set: Samples, recomputed: dict[str, float]
) -> None:
    baseline = persistence_metrics(test_set)
    for key, value in baseline.items():
        assert within(value, manifest.metrics[key], key), (key, value)
    served = next(k for k, v in manifest.variants.items() if v.file == manifest.file)
    for h in (30, 60):
        model = recomputed[f"test_mae_{h}_{served}"]
        persistence = baseline[f"persistence_mae_{h}"]
        assert model <= (1.0 - MIN_GAIN_OVER_PERSISTENCE) * persistence, (h, model, persistence)
        assert model < manifest.metrics[f"linear_mae_{h}"]
