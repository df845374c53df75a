"""The routine/v1 features (``models.routine.spec``): the home-agnostic vocabulary,
the van Kasteren mapping and the serving ``RoutineWindow``. Torch-free.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import pytest

from models.routine.data import Home, Interval, build_features
from models.routine.spec import (
    AREAS,
    CROSS_HOME_VOCABULARY,
    CROSS_HOME_VOCABULARY_X1,
    ENTRANCE_FIRST_S,
    ENTRANCE_SETTLE_S,
    FEATURE_NAMES,
    FEATURE_UNITS,
    INPUT_SHAPE,
    KASTEREN_MAPPING,
    KINDS,
    SPEC_ID,
    V1_VOCABULARY,
    WARMUP_SECONDS,
    RoutineWindow,
    SensorRef,
    group_feature_names,
)

T0 = datetime(2024, 1, 1, 0, 0, tzinfo=UTC).timestamp()
CUPBOARD = SensorRef("kitchen", "cupboard")
FRONT = SensorRef("entrance", "door")
FLUSH = SensorRef("toilet", "toilet_flush")
IDX = {n: i for i, n in enumerate(FEATURE_NAMES)}


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


def test_v1_layout_is_unchanged_by_the_vocabulary_parameter() -> None:
    """The served contract: routine/v1 keeps its 415 inputs in their order."""
    assert V1_VOCABULARY.spec_id == SPEC_ID
    assert tuple(n for n, _ in V1_VOCABULARY.layout()) == FEATURE_NAMES
    assert len(FEATURE_NAMES) == 415
    assert FEATURE_NAMES[0] == "entrance.door.active"
    assert FEATURE_NAMES[-3:] == ("home.any.recency", "hour_sin", "hour_cos")


def test_v1_window_ignores_sensors_outside_its_vocabulary() -> None:
    """A bed mat (installer vocabulary, not v1) must neither count nor start the window."""
    bed = SensorRef("bedroom", "bed")
    w, ref = RoutineWindow(), RoutineWindow()
    assert not w.update(bed, 1.0, T0)
    w.update(CUPBOARD, 1.0, T0 + 10.0)
    ref.update(CUPBOARD, 1.0, T0 + 10.0)
    w.update(bed, 0.0, T0 + 20.0)
    np.testing.assert_array_equal(w.tensor(T0 + 3700.0), ref.tensor(T0 + 3700.0))
    assert not w.ready(T0 + 3609.0)  # started by the cupboard, not by the mat


def test_cross_home_vocabulary_pools_kinds_across_areas_and_washrooms() -> None:
    v = CROSS_HOME_VOCABULARY_X1
    idx = {n: i for i, n in enumerate(n for n, _ in v.layout())}
    assert len(idx) == len(v.layout())  # unique names
    w = RoutineWindow(started_at=T0, vocabulary=v)
    assert w.spec.spec_id == v.spec_id != SPEC_ID
    w.update(SensorRef("toilet", "door"), 1.0, T0 + 3600.0, "wc")
    w.update(SensorRef("bedroom", "bed"), 1.0, T0 + 3601.0, "mat")
    w.update(SensorRef("bathroom", "door"), 1.0, T0 + 3602.0, "bath")
    x = w.tensor(T0 + 3603.0)
    assert x.shape == w.spec.input_shape
    assert "toilet.door.active" not in idx  # no per-group tracks
    assert len(idx) == 6 * len(v.areas) + 5 * len(v.kinds) + 5 + 5 + 2
    assert x[idx["toilet.any.active"]] == 1.0
    assert x[idx["any.bed.active"]] == 1.0
    # Two doors in two areas: one kind track, two activations.
    assert x[idx["any.door.fired_1m"]] == pytest.approx(math.log1p(2))
    assert x[idx["washroom.any.fired_1m"]] == pytest.approx(math.log1p(2))
    assert x[idx["home.any.fired_1m"]] == pytest.approx(math.log1p(3))
    assert x[idx["bathroom.any.last"]] == 1.0
    assert x[idx["bedroom.any.last"]] == 0.0
    assert x[idx["bedroom.any.active"]] == 1.0
    assert x[idx["kitchen.any.recency"]] == 0.0  # never fired
    # Closing the bathroom door leaves the toilet door holding the washroom active.
    w.update(SensorRef("bathroom", "door"), 0.0, T0 + 3604.0, "bath")
    x = w.tensor(T0 + 3605.0)
    assert x[idx["washroom.any.active"]] == 1.0
    assert x[idx["bathroom.any.active"]] == 0.0


def _since(x: np.ndarray, v_idx: dict[str, int]) -> list[float]:
    names = ("fired", "sensors", "minutes", "first30m_fired", "first30m_sensors")
    return [float(x[v_idx[f"since_entrance.{n}"]]) for n in names]


def test_x2_counts_what_the_home_did_since_its_entrance_opened() -> None:
    """routine/x2 = routine/x1 + five inputs: activations and distinct sensors since the
    entrance last activated (those within the settle time are the person leaving),
    minutes since, and the same counts over the first 30 minutes."""
    v = CROSS_HOME_VOCABULARY
    assert v.spec_id == "routine/x2"
    x1_names = [n for n, _ in CROSS_HOME_VOCABULARY_X1.layout()]
    names = [n for n, _ in v.layout()]
    assert names[: len(x1_names) - 2] == x1_names[:-2]  # x1's inputs, in x1's order
    assert names[-2:] == x1_names[-2:] == ["hour_sin", "hour_cos"]
    assert len(names) == len(x1_names) + 5
    idx = {n: i for i, n in enumerate(names)}
    pir = SensorRef("kitchen", "motion")
    w = RoutineWindow(started_at=T0, vocabulary=v)
    w.update(pir, 1.0, T0 + 10.0, "pir")
    assert _since(w.tensor(T0 + 20.0), idx) == [0.0] * 5  # the entrance never opened
    door = T0 + 100.0
    w.update(FRONT, 1.0, door, "front")
    w.update(FRONT, 0.0, door + 5.0, "front")
    w.update(pir, 0.0, door + 30.0, "pir")
    w.update(pir, 1.0, door + ENTRANCE_SETTLE_S - 1.0, "pir")  # the person leaving
    assert _since(w.tensor(door + 600.0), idx) == pytest.approx([0, 0, math.log1p(10), 0, 0])
    # A lone PIR firing three times while nobody is in: one sensor.
    for k in range(3):
        w.update(pir, 0.0, door + 200.0 + 100 * k, "pir")
        w.update(pir, 1.0, door + 250.0 + 100 * k, "pir")
    w.update(pir, 1.0, door + 600.0, "pir")  # a repeated "on": not an activation
    # ... then, after the first half hour, two other sensors.
    late = door + ENTRANCE_FIRST_S + 60.0
    w.update(CUPBOARD, 1.0, late, "cups")
    w.update(FLUSH, 1.0, late + 1.0, "flush")
    got = _since(w.tensor(late + 60.0), idx)
    want = [math.log1p(5), math.log1p(3), math.log1p((late + 60.0 - door) / 60.0)]
    assert got == pytest.approx([*want, math.log1p(3), math.log1p(1)])
    # The entrance opening again starts afresh; the minutes are capped at 2 days.
    w.update(SensorRef("entrance", "cupboard"), 1.0, late + 120.0, "keys")
    assert _since(w.tensor(late + 120.0), idx) == [0.0] * 5
    assert _since(w.tensor(late + 120.0 + 10 * 86_400.0), idx)[2] == pytest.approx(
        math.log1p(2880.0)
    )


def test_x1_and_v1_have_no_entrance_inputs() -> None:
    for v in (V1_VOCABULARY, CROSS_HOME_VOCABULARY_X1):
        assert not any(n.startswith("since_entrance") for n, _ in v.layout())
