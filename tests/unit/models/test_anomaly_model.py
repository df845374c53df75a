"""The shipped appliance energy anomaly artifact, its fault injector and its metrics.

Torch-free: it runs the ONNX files in onnxruntime as the inference service does and
builds inputs with the serving feature code. Tests that need the UCI Appliances data
skip with a reason when ``../shared/data`` (or ``$ROOST_DATA_DIR``) is not here.

Floors on the served model's test-period metrics (injected faults, see
``models.anomaly.evaluate``); shipped 1.0.0 scores recall stuck_on 0.90, surge 0.40,
dropout 1.00, frozen 0.95, overall precision 0.94, 0.15 false alarms/day:

- recall: stuck_on >= 0.85, surge >= 0.30 (a 3-6x surge on an ordinary reading looks
  like a kettle), dropout >= 0.95, frozen >= 0.90;
- precision overall >= 0.85; false alarms on the clean test period <= 0.5 per day;
- expected-energy MAE below the last-reading (persistence) baseline.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pytest

from models.anomaly.data import (
    DURATION_STEPS,
    EVENTS_PER_KIND,
    FAULT_KINDS,
    MIN_GAP_STEPS,
    STUCK_ON_WH,
    SURGE_FACTOR,
    ApplianceData,
    FaultKind,
    feature_window_tensors,
    inject,
    load_appliances,
    place_events,
    split,
    window_inputs,
)
from models.anomaly.evaluate import (
    alert_episodes,
    calibrate_threshold,
    evaluate,
    within_tolerance,
)
from models.anomaly.spec import ANOMALY_V1, ENERGY, OUTPUT_LABELS, WINDOW
from models.datasets import DatasetMissing
from models.manifest import Manifest, load_manifest, shipped_models_dir
from tests.support.shared_data import DATA_DIR, MISSING

MODEL_DIR = shipped_models_dir() / "anomaly"
MAX_ARTIFACT_BYTES = 2 * 1024 * 1024
RECALL_FLOORS = {"stuck_on": 0.85, "surge": 0.30, "dropout": 0.95, "frozen": 0.90}
PRECISION_OVERALL_FLOOR = 0.85
FALSE_ALARMS_PER_DAY_CEILING = 0.5


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return load_manifest(MODEL_DIR)  # checks the sha256 of the served file and every variant


@pytest.fixture(scope="module")
def session(manifest: Manifest) -> ort.InferenceSession:
    return ort.InferenceSession(str(MODEL_DIR / manifest.file), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def data() -> ApplianceData:
    if DATA_DIR is None:
        pytest.skip(MISSING)
    try:
        return load_appliances(DATA_DIR)
    except DatasetMissing as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def evaluated(data: ApplianceData) -> dict[str, float]:
    return evaluate(MODEL_DIR, DATA_DIR)


def _run(
    session: ort.InferenceSession, manifest: Manifest, x: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    (out,) = session.run([manifest.output_name], {manifest.input.name: x})
    return np.asarray(out, dtype=np.float32)


# --- Artifact contract (no data needed) ------------------------------------------------


def test_manifest_matches_feature_spec(manifest: Manifest) -> None:
    assert manifest.name == "anomaly"
    assert manifest.version == "1.0.0"
    assert manifest.task_kind == "regression"
    assert manifest.feature_spec == ANOMALY_V1.spec_id == "anomaly/v1"
    assert manifest.input.name == "features"
    assert manifest.input.dtype == "float32"
    assert manifest.input.shape == ANOMALY_V1.input_shape == (WINDOW, 5)
    assert manifest.input.feature_names() == ANOMALY_V1.feature_names
    assert [f.unit for f in manifest.input.features] == ANOMALY_V1.units
    assert manifest.output_labels == OUTPUT_LABELS
    assert len(manifest.baseline) == manifest.input.size
    assert set(manifest.variants) == {"fp32", "int8"}
    assert manifest.file in {v.file for v in manifest.variants.values()}
    assert manifest.metrics["anomaly_threshold"] == 1.0
    assert manifest.metrics["params"] <= 100_000
    for name in (*(v.file for v in manifest.variants.values()), "manifest.json", "MODEL_CARD.md"):
        assert (MODEL_DIR / name).stat().st_size < MAX_ARTIFACT_BYTES


def test_model_card_attribution() -> None:
    card = (MODEL_DIR / "MODEL_CARD.md").read_text()
    assert "CC BY 4.0" in card
    assert "Candanedo, L.M., Feldheim, V., Deramaix, D. (2017)" in card
    assert "Energy and Buildings 140" in card


def test_onnx_io_matches_manifest(manifest: Manifest, session: ort.InferenceSession) -> None:
    (inp,) = session.get_inputs()
    (out,) = session.get_outputs()
    assert inp.name == manifest.input.name
    assert inp.type == "tensor(float)"
    assert inp.shape[1:] == list(manifest.input.shape)
    assert isinstance(inp.shape[0], str)  # dynamic batch axis
    assert out.name == manifest.output_name


def _windows(manifest: Manifest, energy: Sequence[float]) -> npt.NDArray[np.float32]:
    """A typical window (training means) with the given energy readings, oldest first."""
    x = np.asarray(manifest.baseline, dtype=np.float32).reshape(manifest.input.shape).copy()
    x[:, ENERGY] = energy
    return x


def test_scores_on_handmade_windows(manifest: Manifest, session: ort.InferenceSession) -> None:
    """Each fault's signature raises its own score past the alert level; a varied ordinary
    window does not alert. Outputs are finite and anomaly_score is the components' max."""
    ordinary = [60, 50, 70, 60, 50, 60, 80, 60, 50, 60, 70, 60]
    zeros = [60, 50, 70, 60, 50, 60, 0, 0, 0, 0, 0, 0]
    frozen = [60, 50] + [90] * 10
    stuck = [v + 400 for v in ordinary]
    surge = [*ordinary[:-1], 2000]
    x = np.stack([_windows(manifest, e) for e in (ordinary, zeros, frozen, stuck, surge)])
    out = _run(session, manifest, x)
    assert out.shape == (5, len(OUTPUT_LABELS))
    assert np.all(np.isfinite(out))
    col = {label: i for i, label in enumerate(OUTPUT_LABELS)}
    np.testing.assert_allclose(out[:, col["anomaly_score"]], out[:, 2:].max(axis=1), rtol=1e-6)
    threshold = manifest.metrics["anomaly_threshold"]
    assert out[0, col["anomaly_score"]] < threshold
    assert 20.0 < out[0, col["expected_wh"]] < 200.0
    assert out[1, col["dropout_score"]] >= threshold
    assert out[2, col["frozen_score"]] >= threshold
    assert out[3, col["stuck_on_score"]] >= threshold
    assert out[4, col["surge_score"]] >= threshold


# --- Fault injection (synthetic readings, no data needed) ------------------------------


def _readings(n: int = 6000) -> npt.NDArray[np.float64]:
    rng = np.random.default_rng(3)
    return np.round(rng.gamma(2.0, 40.0, size=n) + 10.0, -1)


def test_injection_is_deterministic() -> None:
    energy = _readings()
    for kind in FAULT_KINDS:
        a, ev_a = inject(energy, kind, 1000, 5900, seed=7)
        b, ev_b = inject(energy, kind, 1000, 5900, seed=7)
        c, _ = inject(energy, kind, 1000, 5900, seed=8)
        assert ev_a == ev_b
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_faults_look_like_what_they_claim(kind: FaultKind) -> None:
    energy = _readings()
    faulted, events = inject(energy, kind, 1000, 5900, seed=1)
    assert len(events) == EVENTS_PER_KIND
    lo, hi = DURATION_STEPS[kind]
    touched = np.zeros(len(energy), dtype=bool)
    prev_stop = 1000
    for ev in events:
        assert ev.kind == kind
        assert lo <= ev.steps <= hi
        assert ev.start - prev_stop >= MIN_GAP_STEPS  # non-overlapping, gap before each
        prev_stop = ev.stop
        seg, clean = faulted[ev.start : ev.stop], energy[ev.start : ev.stop]
        touched[ev.start : ev.stop] = True
        if kind == "stuck_on":  # a constant extra load on top of the normal readings
            assert STUCK_ON_WH[0] <= ev.magnitude <= STUCK_ON_WH[1]
            np.testing.assert_allclose(seg - clean, ev.magnitude)
        elif kind == "surge":  # a multiple of the normal readings
            assert SURGE_FACTOR[0] <= ev.magnitude <= SURGE_FACTOR[1]
            np.testing.assert_allclose(seg / clean, ev.magnitude)
        elif kind == "dropout":  # the meter reads zero
            assert np.all(seg == 0.0)
        else:  # the meter repeats its last good value
            assert np.all(seg == energy[ev.start - 1])
            assert ev.magnitude == energy[ev.start - 1]
    assert 5900 - prev_stop >= MIN_GAP_STEPS
    np.testing.assert_array_equal(faulted[~touched], energy[~touched])  # nothing else changes


def test_place_events_rejects_what_does_not_fit() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="do not fit"):
        place_events(0, 100, 10, durations=(6, 36), rng=rng)


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


# --- With the UCI data -----------------------------------------------------------------


def test_training_data_hash(manifest: Manifest, data: ApplianceData) -> None:
    assert manifest.training_data_sha256 == data.sha256


def test_feature_window_parity(data: ApplianceData) -> None:
    """Training inputs (snapshot rows stacked WINDOW at a time) equal the hub's
    FeatureWindow fed the same readings in time order, clean and faulted."""
    start, stop = 3000, 4500
    ends, tensors = feature_window_tensors(data, start, stop)
    assert ends[0] == start + WINDOW - 1
    np.testing.assert_array_equal(ends, np.arange(start + WINDOW - 1, stop))
    np.testing.assert_array_equal(tensors, window_inputs(data, start + WINDOW - 1, stop))
    faulted, _ = inject(data.energy, "dropout", start, stop, count=5)
    _, tensors_f = feature_window_tensors(data, start, stop, faulted)
    np.testing.assert_array_equal(tensors_f, window_inputs(data, start + WINDOW - 1, stop, faulted))


def test_split_is_chronological(data: ApplianceData) -> None:
    parts = split(len(data))
    assert parts.train[1] == parts.validation[0]
    assert parts.validation[1] == parts.test[0]
    assert parts.test[1] == len(data)
    assert (parts.test[1] - parts.test[0]) / len(data) == pytest.approx(0.2, abs=0.01)


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
