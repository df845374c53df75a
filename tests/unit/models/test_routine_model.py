"""The routine model: home-agnostic features, its event window, labels and the artifact.

Torch-free: the artifact runs in onnxruntime as the inference service runs it, and the
inputs come from ``models.routine.spec.RoutineWindow``, the serving feature code.
Tests needing the van Kasteren data skip with a reason when it is not on this machine.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import onnxruntime as ort
import pytest

from models.datasets import DatasetMissing
from models.manifest import Manifest, load_manifest, shipped_models_dir
from models.routine.data import (
    CLASSES,
    Home,
    Interval,
    KasterenData,
    build_features,
    labels,
    leave_days_out_folds,
    load_kasteren,
    other_home,
)
from models.routine.evaluate import TOLERANCE, evaluate, report
from models.routine.spec import (
    AREAS,
    FEATURE_NAMES,
    FEATURE_UNITS,
    INPUT_SHAPE,
    KASTEREN_MAPPING,
    KINDS,
    SPEC_ID,
    WARMUP_SECONDS,
    RoutineWindow,
    SensorRef,
    group_feature_names,
)
from services.inference.registry import load_model
from tests.support.shared_data import DATA_DIR, MISSING

MODEL_DIR = shipped_models_dir() / "routine"
# Stated floors (leave-days-out CV macro-F1 over 8 classes, onnxruntime fp32).
CV_MACRO_F1_FLOOR = 0.55
MIN_GAIN_OVER_TIME_OF_DAY = 0.15
OTHER_HOME_MACRO_F1_FLOOR = 0.50

T0 = datetime(2024, 1, 1, 0, 0, tzinfo=UTC).timestamp()
CUPBOARD = SensorRef("kitchen", "cupboard")
FRONT = SensorRef("entrance", "door")
FLUSH = SensorRef("toilet", "toilet_flush")
IDX = {n: i for i, n in enumerate(FEATURE_NAMES)}


def _kasteren() -> KasterenData:
    if DATA_DIR is None:
        pytest.skip(MISSING)
    try:
        return load_kasteren(DATA_DIR)
    except DatasetMissing as e:
        pytest.skip(f"van Kasteren data not available: {e}")


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return load_manifest(MODEL_DIR)  # checks every variant's sha256


# --- Spec and mapping ------------------------------------------------------------------


def test_spec_constants() -> None:
    assert SPEC_ID == "routine/v1" == RoutineWindow.spec.spec_id
    assert INPUT_SHAPE == (len(FEATURE_NAMES),) == RoutineWindow.spec.input_shape
    assert len(FEATURE_UNITS) == len(FEATURE_NAMES) == len(set(FEATURE_NAMES))
    # The length is fixed by the vocabulary: 5 per group, 6 per area, 5 home, 2 time.
    assert len(FEATURE_NAMES) == 5 * len(AREAS) * len(KINDS) + 6 * len(AREAS) + 5 + 2


def test_features_are_named_by_vocabulary_never_by_sensor() -> None:
    vocabulary = {*AREAS, *KINDS, "any", "home"}
    for name in FEATURE_NAMES:
        if name.startswith("hour_"):
            continue
        scope, kind, _ = name.split(".")
        assert scope in vocabulary, name
        assert kind in vocabulary, name
    names = " ".join(FEATURE_NAMES)
    for sensor in KASTEREN_MAPPING:  # sensor names (and ids) never appear verbatim
        assert sensor not in names


def test_kasteren_mapping() -> None:
    assert len(KASTEREN_MAPPING) == 14
    assert KASTEREN_MAPPING["Frontdoor"] == SensorRef("entrance", "door")
    assert KASTEREN_MAPPING["Hall-Toilet door"] == SensorRef("toilet", "door")
    assert KASTEREN_MAPPING["ToiletFlush"] == SensorRef("toilet", "toilet_flush")
    assert KASTEREN_MAPPING["Cups cupboard"] == SensorRef("kitchen", "cupboard")
    assert KASTEREN_MAPPING["Hall-Bedroom door"] == SensorRef("bedroom", "door")


def test_sensor_ref_rejects_unknown_vocabulary() -> None:
    with pytest.raises(ValueError, match="unknown area"):
        SensorRef("garage", "door")
    with pytest.raises(ValueError, match="unknown sensor kind"):
        SensorRef("kitchen", "toaster")


# --- RoutineWindow on a synthetic event stream -----------------------------------------


def test_window_counts_activity_recency_and_last_area() -> None:
    w = RoutineWindow(started_at=T0)
    assert not w.ready(T0 + 60)
    assert w.update(CUPBOARD, 1.0, T0 + 3600.0)  # ready after the 60 min warm-up
    x = w.tensor(T0 + 3601.0)
    assert x.shape == INPUT_SHAPE
    assert x.dtype == np.float32
    assert x[IDX["kitchen.cupboard.active"]] == 1.0
    assert x[IDX["kitchen.any.active"]] == 1.0
    assert x[IDX["home.any.active"]] == 1.0
    assert x[IDX["kitchen.cupboard.fired_1m"]] == pytest.approx(math.log1p(1))
    assert x[IDX["kitchen.cupboard.fired_60m"]] == pytest.approx(math.log1p(1))
    assert x[IDX["kitchen.any.last"]] == 1.0
    assert x[IDX["kitchen.cupboard.recency"]] > 0.8

    w.update(CUPBOARD, 0.0, T0 + 3605.0)
    w.update(FRONT, 1.0, T0 + 3700.0)
    w.update(FRONT, 0.0, T0 + 3702.0)
    x = w.tensor(T0 + 3720.0)
    assert x[IDX["kitchen.cupboard.active"]] == 0.0
    assert x[IDX["kitchen.cupboard.fired_1m"]] == 0.0  # 115 s ago
    assert x[IDX["kitchen.cupboard.fired_10m"]] == pytest.approx(math.log1p(1))
    assert x[IDX["entrance.door.fired_1m"]] == pytest.approx(math.log1p(1))
    assert x[IDX["home.any.fired_10m"]] == pytest.approx(math.log1p(2))
    assert x[IDX["entrance.any.last"]] == 1.0
    assert x[IDX["kitchen.any.last"]] == 0.0
    assert x[IDX["entrance.door.recency"]] > x[IDX["kitchen.cupboard.recency"]] > 0.0

    # An hour later the counts are gone, recency decays, and after a day it is zero.
    x = w.tensor(T0 + 3600.0 + 3 * 3600.0)
    assert x[IDX["kitchen.cupboard.fired_60m"]] == 0.0
    assert 0.0 < x[IDX["kitchen.cupboard.recency"]] < 0.5
    x = w.tensor(T0 + 3600.0 + 25 * 3600.0)
    assert x[IDX["kitchen.cupboard.recency"]] == 0.0
    # Groups and areas without sensors stay zero; the time of day is the local hour.
    unused = [IDX[n] for n in group_feature_names(FLUSH)]
    assert not x[unused].any()
    hour = (3600.0 + 25 * 3600.0) % 86_400 / 86_400
    assert x[IDX["hour_sin"]] == pytest.approx(math.sin(2 * math.pi * hour), abs=1e-6)


def test_window_sources_and_counters() -> None:
    w = RoutineWindow(started_at=T0)
    # Two cupboards of the same group: active until both are closed.
    w.update(CUPBOARD, 1.0, T0 + 10, source="a")
    w.update(CUPBOARD, 1.0, T0 + 11, source="a")  # repeated state report: not counted
    w.update(CUPBOARD, 1.0, T0 + 12, source="b")
    w.update(CUPBOARD, 0.0, T0 + 13, source="a")
    x = w.tensor(T0 + 14)
    assert x[IDX["kitchen.cupboard.active"]] == 1.0
    assert x[IDX["kitchen.cupboard.fired_1m"]] == pytest.approx(math.log1p(2))
    w.update(CUPBOARD, 0.0, T0 + 15, source="b")
    assert w.tensor(T0 + 16)[IDX["kitchen.cupboard.active"]] == 0.0
    # Without sources, on/off events of a group count up and down.
    v = RoutineWindow(started_at=T0)
    for ts, val in ((10, 1.0), (11, 1.0), (12, 0.0)):
        v.update(CUPBOARD, val, T0 + ts)
    assert v.tensor(T0 + 13)[IDX["kitchen.cupboard.active"]] == 1.0
    v.update(CUPBOARD, 0.0, T0 + 14)
    assert v.tensor(T0 + 15)[IDX["kitchen.cupboard.active"]] == 0.0


def test_window_rejects_events_out_of_order() -> None:
    w = RoutineWindow()
    assert not w.update(FRONT, 1.0, T0 + 100)  # starts at the first event: not ready yet
    assert w.ready(T0 + 100 + WARMUP_SECONDS)
    with pytest.raises(ValueError, match="older"):
        w.update(FRONT, 0.0, T0 + 50)
    with pytest.raises(ValueError, match="older"):
        w.tensor(T0 + 50)


def _home(ids: dict[str, str]) -> Home:
    """A tiny synthetic home: its sensors (by the given ids) over a morning."""
    refs = {"front": FRONT, "cup1": CUPBOARD, "cup2": CUPBOARD, "flush": FLUSH}
    fires = [
        ("front", 3600, 3605),
        ("cup1", 4000, 4003),
        ("cup2", 4001, 4010),
        ("flush", 5000, 5001),
        ("cup1", 5200, 5300),
        ("front", 7000, 7002),
    ]
    sensors = tuple(Interval(T0 + a, T0 + b, ids[s]) for s, a, b in fires)
    return Home("synthetic", sensors, {ids[s]: ref for s, ref in refs.items()})


def test_sensor_ids_never_reach_the_features() -> None:
    """Two homes with different sensor ids but the same SensorRefs: identical tensors."""
    starts = T0 + np.arange(0.0, 8400.0, 60.0)
    a, ready_a = build_features(
        _home({"front": "12", "cup1": "7", "cup2": "9", "flush": "14"}), starts
    )
    b, ready_b = build_features(
        _home(
            {
                "front": "binary_sensor.entry",
                "cup1": "zigbee_0x00124b",
                "cup2": "cabinet-left",
                "flush": "wc",
            }
        ),
        starts,
    )
    assert a.any()
    assert ready_a.any()
    np.testing.assert_array_equal(ready_a, ready_b)
    np.testing.assert_array_equal(a, b)


# --- Labels and folds ------------------------------------------------------------------


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


def test_report_macro_f1() -> None:
    y = np.array([0, 0, 1, 7], dtype=np.int64)
    r = report(y, np.array([0, 1, 1, 7], dtype=np.int64))
    assert r["accuracy"] == pytest.approx(0.75)
    assert r["f1_away"] == pytest.approx(2 / 3)
    assert r["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1.0) / len(CLASSES))


# --- The shipped artifact --------------------------------------------------------------


def test_manifest_matches_spec(manifest: Manifest) -> None:
    assert manifest.name == "routine"
    assert manifest.version == "1.0.0"
    assert manifest.task_kind == "classification"
    assert manifest.feature_spec == SPEC_ID
    assert manifest.input.name == "features"
    assert manifest.input.dtype == "float32"
    assert manifest.input.shape == INPUT_SHAPE
    assert manifest.input.feature_names() == list(FEATURE_NAMES)
    assert [f.unit for f in manifest.input.features] == list(FEATURE_UNITS)
    assert manifest.output_name == "probabilities"
    assert manifest.output_labels == CLASSES
    assert len(manifest.baseline) == manifest.input.size
    assert set(manifest.variants) == {"fp32", "int8"}
    served = next(v for v in manifest.variants.values() if v.file == manifest.file)
    assert served.sha256 == manifest.sha256
    for v in manifest.variants.values():
        assert (MODEL_DIR / v.file).stat().st_size == v.size_bytes < 2_000_000
    for c in CLASSES:
        assert f"cv_f1_{c}" in manifest.metrics
    assert manifest.metrics["params"] <= 100_000
    load_model(MODEL_DIR)  # the inference service's loader accepts it


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_variants_output_probabilities(manifest: Manifest, variant: str) -> None:
    sess = ort.InferenceSession(
        str(MODEL_DIR / manifest.variants[variant].file), providers=["CPUExecutionProvider"]
    )
    rng = np.random.default_rng(0)
    x = rng.uniform(0.0, 1.0, size=(16, *INPUT_SHAPE)).astype(np.float32)
    x[0] = np.asarray(manifest.baseline, dtype=np.float32)
    x[1] = 0.0
    (probs,) = sess.run([manifest.output_name], {manifest.input.name: x})
    assert probs.shape == (16, len(CLASSES))
    assert np.all(np.isfinite(probs))
    assert np.all(probs >= 0.0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_macro_f1_floor_vs_baselines(manifest: Manifest) -> None:
    m = manifest.metrics
    assert m["cv_macro_f1"] >= CV_MACRO_F1_FLOOR
    assert m["cv_macro_f1"] >= m["baseline_time_of_day_macro_f1"] + MIN_GAIN_OVER_TIME_OF_DAY
    assert m["cv_macro_f1"] > m["baseline_majority_macro_f1"]
    assert m["other_home_macro_f1"] >= OTHER_HOME_MACRO_F1_FLOOR
    # The served variant is int8 only if it kept macro-F1 within 1 pp.
    if manifest.file == manifest.variants["int8"].file:
        assert m["cv_macro_f1_int8"] >= m["cv_macro_f1_fp32"] - 0.01


def test_evaluate_reproduces_manifest(manifest: Manifest) -> None:
    data = _kasteren()
    assert data.sha256 == manifest.training_data_sha256
    assert len(data.sensors) == 1319
    assert len(data.activities) == 245
    assert {iv.name for iv in other_home(data).sensors}.isdisjoint(KASTEREN_MAPPING)
    metrics = evaluate(MODEL_DIR, DATA_DIR)
    for variant in ("fp32", "int8"):
        assert f"alldays_macro_f1_{variant}" in metrics
        assert f"other_home_alldays_macro_f1_{variant}" in metrics
    for key, value in metrics.items():
        assert value == pytest.approx(manifest.metrics[key], abs=TOLERANCE), key
    assert metrics["alldays_macro_f1_fp32"] >= CV_MACRO_F1_FLOOR
