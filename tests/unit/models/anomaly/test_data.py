"""UCI Appliances for the anomaly model (``models.anomaly.data``): the fault
injector, the serving feature path and the chronological split. Tests needing the
data skip with a reason when ``../shared/data`` (or ``$ROOST_DATA_DIR``) is not here.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
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
    place_events,
    split,
    window_inputs,
)
from models.anomaly.spec import WINDOW
from models.manifest import Manifest


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
