"""The shipped comfort artifact: manifest, ONNX contract, feature parity, test-day MAE.

Torch-free: the ONNX files run in onnxruntime as the inference service runs them, and
inputs come from the hub's own FeatureWindow (``models.comfort.data``).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnxruntime as ort
import pytest

from models.comfort.data import (
    FEED_ORDER,
    ROOMS,
    AppliancesData,
    Samples,
    build_samples,
    load_appliances,
    split_bounds,
)
from models.comfort.evaluate import (
    evaluate,
    evaluation_samples,
    persistence_metrics,
)
from models.comfort.spec import COMFORT_V1, HORIZON_STEPS, OUTPUT_LABELS
from models.datasets import DatasetMissing
from models.features import FeatureWindow, time_of_day_features
from models.manifest import Manifest, load_manifest, shipped_models_dir
from models.report import within
from tests.support.shared_data import DATA_DIR, MISSING

MODEL_DIR = shipped_models_dir() / "comfort"
MAX_ARTIFACT_BYTES = 2 * 1024 * 1024
# The model must cut the persistence MAE by at least this fraction at both horizons.
MIN_GAIN_OVER_PERSISTENCE = 0.10


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return load_manifest(MODEL_DIR)  # checks the sha256 of the served file and every variant


@pytest.fixture(scope="module")
def data() -> AppliancesData:
    if DATA_DIR is None:
        pytest.skip(MISSING)
    try:
        return load_appliances(DATA_DIR)
    except DatasetMissing as e:
        pytest.skip(f"UCI Appliances data not available: {e}")


@pytest.fixture(scope="module")
def test_set(data: AppliancesData) -> Samples:
    return evaluation_samples(data)


@pytest.fixture(scope="module")
def recomputed(data: AppliancesData) -> dict[str, float]:
    return evaluate(MODEL_DIR, DATA_DIR, data)


def test_manifest_matches_feature_spec(manifest: Manifest) -> None:
    assert manifest.name == "comfort"
    assert manifest.version == "1.0.0"
    assert manifest.task_kind == "regression"
    assert manifest.feature_spec == COMFORT_V1.spec_id == "comfort/v1"
    assert manifest.input.name == "features"
    assert manifest.input.dtype == "float32"
    assert manifest.input.shape == COMFORT_V1.input_shape == (COMFORT_V1.window, 6)
    assert manifest.input.feature_names() == COMFORT_V1.feature_names
    assert [f.unit for f in manifest.input.features] == COMFORT_V1.units
    assert manifest.output_labels == OUTPUT_LABELS == ("temperature_30min", "temperature_60min")
    assert len(manifest.baseline) == manifest.input.size
    assert set(manifest.variants) == {"fp32", "int8"}
    served = [v for v in manifest.variants.values() if v.file == manifest.file]
    assert len(served) == 1
    assert served[0].sha256 == manifest.sha256
    for variant in manifest.variants.values():
        size = (MODEL_DIR / variant.file).stat().st_size
        assert size == variant.size_bytes < MAX_ARTIFACT_BYTES
    for name in ("manifest.json", "MODEL_CARD.md"):
        assert (MODEL_DIR / name).stat().st_size < MAX_ARTIFACT_BYTES


@pytest.mark.parametrize("variant", ["fp32", "int8"])
@pytest.mark.parametrize("n", [1, 5, 64])
def test_output_shape(manifest: Manifest, variant: str, n: int) -> None:
    """[n, 2] finite float32 forecasts near the inputs' temperature, dynamic batch axis."""
    sess = ort.InferenceSession(
        str(MODEL_DIR / manifest.variants[variant].file), providers=["CPUExecutionProvider"]
    )
    (inp,) = sess.get_inputs()
    assert inp.name == manifest.input.name
    assert inp.type == "tensor(float)"
    assert isinstance(inp.shape[0], str)
    assert inp.shape[1:] == list(manifest.input.shape)
    rng = np.random.default_rng(n)
    baseline = np.asarray(manifest.baseline, dtype=np.float32).reshape(manifest.input.shape)
    x = np.repeat(baseline[None], n, axis=0)
    x[..., 0] += rng.uniform(-3.0, 3.0, size=(n, 1)).astype(np.float32)
    (out,) = sess.run([manifest.output_name], {manifest.input.name: x})
    assert out.dtype == np.float32
    assert out.shape == (n, len(OUTPUT_LABELS))
    assert np.all(np.isfinite(out))
    # A steady room stays near its current temperature.
    assert np.all(np.abs(out - x[:, -1, :1]) < 1.0)


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


def _feed(data: AppliancesData, room: str, start: int, stop: int) -> FeatureWindow:
    """A fresh hub FeatureWindow fed one room's raw readings, rows start..stop-1."""
    window = FeatureWindow(COMFORT_V1)
    series = data.room_series(room)
    for i in range(start, stop):
        ts = float(data.ts[i])
        for kind in FEED_ORDER:
            window.update(kind, float(series[kind][i]), ts)
    return window


@pytest.mark.parametrize("room", ["T2", "T5", "T9"])
def test_feature_window_parity(data: AppliancesData, test_set: Samples, room: str) -> None:
    """The evaluation tensors are exactly what the serving FeatureWindow returns."""
    r = list(ROOMS).index(room)
    index = np.flatnonzero(test_set.room == r)
    series = data.room_series(room)
    for k in (index[0], index[len(index) // 2], index[-1]):
        ts = float(test_set.ts[k])
        row = int(np.searchsorted(data.ts, ts))
        window = _feed(data, room, row - 40, row + 1)
        assert window.ready(ts)
        np.testing.assert_array_equal(window.tensor(ts), test_set.x[k])
        # The documented layout: snapshot j has the room temperature of row j and the
        # other sensors' readings of row j-1 (the step is taken at the first reading).
        expected = [
            [
                series["temperature"][j],
                series["humidity"][j - 1],
                series["outdoor_temperature"][j - 1],
                series["outdoor_humidity"][j - 1],
                *time_of_day_features(float(data.ts[j])),
            ]
            for j in range(row - COMFORT_V1.window + 1, row + 1)
        ]
        np.testing.assert_array_equal(test_set.x[k], np.asarray(expected, dtype=np.float32))
        targets = [series["temperature"][row + h] for h in HORIZON_STEPS]
        np.testing.assert_array_equal(test_set.y[k], np.asarray(targets, dtype=np.float32))


def test_warm_start_matches_full_feed(data: AppliancesData) -> None:
    """build_samples(since=...) gives the inputs of a feed from the first row."""
    n = 400
    head = replace(data, ts=data.ts[:n], columns={k: v[:n] for k, v in data.columns.items()})
    since = float(head.ts[150])
    full = build_samples(head)
    part = build_samples(head, since=since)
    keep = full.ts >= since
    assert len(part) == int(keep.sum()) > 0
    np.testing.assert_array_equal(part.x, full.x[keep])
    np.testing.assert_array_equal(part.y, full.y[keep])
    np.testing.assert_array_equal(part.room, full.room[keep])


def test_split_is_chronological(data: AppliancesData, test_set: Samples) -> None:
    bounds = split_bounds(data)
    assert bounds["train"][1] == bounds["val"][0] < bounds["val"][1] == bounds["test"][0]
    assert test_set.ts.min() >= bounds["test"][0]
    assert np.all(test_set.ts + max(HORIZON_STEPS) * COMFORT_V1.step_seconds < bounds["test"][1])
    assert set(np.unique(test_set.room)) == set(range(len(ROOMS)))
