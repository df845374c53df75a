"""The "why" in words: names, values and units, the room's usual level, the time of day."""

from __future__ import annotations

import json
import math
import random

import pytest

from hub.why import DISPLAY_FILE, UsualLevels, Why, load_display, number, time_of_day
from hub.why_routine import routine_phrase
from models.manifest import load_manifest, shipped_models_dir
from roost.audit.v1 import audit_service_pb2 as audit_pb
from roost.common.v1 import common_pb2

NAMES = ["temperature", "humidity", "light", "co2", "hour_sin", "hour_cos"]


def at(hour: float) -> list[float]:
    angle = 2 * math.pi * hour / 24
    return [math.sin(angle), math.cos(angle)]


def decision(
    light: float, attributions: list[tuple[str, float]], *, hour: float = 21.5
) -> audit_pb.Decision:
    values = [22.6, 27.3, light, 953.1, *at(hour)]
    return audit_pb.Decision(
        model=common_pb2.ModelRef(name="occupancy", version="1.0.0"),
        inputs=audit_pb.DecisionInputs(
            feature_names=NAMES, tensor=common_pb2.Tensor(shape=[6], float_values=values)
        ),
        explanation=[
            common_pb2.FeatureAttribution(feature=f, attribution=a) for f, a in attributions
        ],
    )


def test_the_main_reason_with_value_unit_and_the_rooms_usual_level() -> None:
    why = Why(usual=UsualLevels(min_samples=20))
    rng = random.Random(0)
    for _ in range(50):  # evenings in a dim kitchen
        why.explain(decision(rng.uniform(0, 20), [("light", 0.4)]), "kitchen")
    text = why.explain(decision(420.0, [("light", 0.41), ("co2", 0.12)]), "kitchen")
    assert text == (
        "Light 420 lx — well above this room's usual level — was the main reason."
        " Then CO₂ 953 ppm (about usual)."
    )
    # Another room has its own usual level (none yet).
    assert why.explain(decision(420.0, [("light", 0.41)]), "office") == (
        "Light 420 lx was the main reason."
    )


def test_below_and_about_usual() -> None:
    usual = UsualLevels(min_samples=5)
    for v in (400.0, 420.0, 380.0, 410.0, 390.0, 400.0):
        usual.observe(("m", "a", "light"), v)
    assert usual.compare(("m", "a", "light"), 400.0) == "about"
    assert usual.compare(("m", "a", "light"), 385.0) == "below"
    assert usual.compare(("m", "a", "light"), 0.0) == "well below"
    assert usual.compare(("m", "a", "light"), 411.0) == "above"
    assert usual.compare(("m", "b", "light"), 0.0) is None  # another room: not enough yet
    usual.observe(("m", "a", "light"), float("nan"))  # ignored, never poisons the level
    assert usual.compare(("m", "a", "light"), 400.0) == "about"


def test_time_of_day_once_and_negligible_or_unknown_features() -> None:
    why = Why()
    text = why.explain(
        decision(0.0, [("hour_cos", -0.3), ("hour_sin", 0.2), ("co2", 1e-9), ("x.y_z", 0.1)]),
        "kitchen",
    )
    assert text == "The time of day (21:30) was the main reason. Then x y z."
    assert why.explain(decision(0.0, [("co2", 0.0)]), "kitchen") == ""


def test_a_window_models_value_is_its_latest_row() -> None:
    names = ["temperature", "humidity", "outdoor_temperature", "outdoor_humidity"]
    rows = [[20.0, 40.0, 5.0, 80.0], [21.0, 41.0, 6.5, 81.0]]
    d = audit_pb.Decision(
        model=common_pb2.ModelRef(name="comfort"),
        inputs=audit_pb.DecisionInputs(
            feature_names=names,
            tensor=common_pb2.Tensor(shape=[2, 4], float_values=[v for r in rows for v in r]),
        ),
        explanation=[common_pb2.FeatureAttribution(feature="outdoor_temperature", attribution=-1)],
    )
    assert Why().explain(d, "living_room") == "Outdoor temperature 6.5 °C was the main reason."


@pytest.mark.parametrize(
    ("value", "unit", "text"),
    [(420.0, "lx", "420 lx"), (22.64, "°C", "22.6 °C"), (27.3, "%", "27.3%"), (0.004, "", "0.004")],
)
def test_numbers(value: float, unit: str, text: str) -> None:
    assert number(value, unit) == text


def test_time_of_day() -> None:
    assert time_of_day(dict(zip(["hour_sin", "hour_cos"], at(7.25), strict=True))) == "07:15"
    assert time_of_day({}) == ""


def test_every_shipped_physical_feature_has_a_display_name_and_the_manifests_unit() -> None:
    """The display file covers each shipped model's inputs that carry a physical unit,
    with the manifest's unit (written for people: degC as °C)."""
    display = load_display()
    assert set(json.loads(DISPLAY_FILE.read_text())) - {"_comment"} == set(display)
    people = {"degC": "°C"}
    for model in ("occupancy", "comfort", "anomaly"):
        manifest = load_manifest(shipped_models_dir() / model)
        for f in manifest.input.features:
            if f.name in ("hour_sin", "hour_cos"):
                continue
            assert display[model][f.name].unit == people.get(f.unit, f.unit), (model, f.name)


@pytest.mark.parametrize(
    ("feature", "value", "words"),
    [
        (
            "kitchen.fridge.fired_10m",
            math.log1p(3),
            "the kitchen fridge (used 3 times in the last 10 min)",
        ),
        (
            "kitchen.fridge.fired_1m",
            math.log1p(1),
            "the kitchen fridge (used once in the last 1 min)",
        ),
        (
            "toilet.toilet_flush.fired_60m",
            0.0,
            "the toilet toilet flush (not used in the last 60 min)",
        ),
        (
            "bathroom.any.recency",
            1 - math.log1p(120) / math.log1p(1440),
            "the bathroom (last used 2 h ago)",
        ),
        ("hall.door.recency", 1.0, "the hall door (last used just now)"),
        ("hall.door.recency", 0.0, "the hall door (not used for a day or more)"),
        ("living_room.motion.active", 1.0, "the living room motion (active now)"),
        ("home.any.active", 0.0, "anything at home (quiet now)"),
        ("bedroom.any.last", 1.0, "the latest activity, in the bedroom"),
        ("laundry.washing_machine.active", 0.0, "the laundry washing machine (quiet now)"),
    ],
)
def test_routine_statistics_in_words(feature: str, value: float, words: str) -> None:
    assert routine_phrase(feature, value) == words


def test_every_shipped_routine_feature_is_put_in_words() -> None:
    manifest = load_manifest(shipped_models_dir() / "routine")
    for f in manifest.input.features:
        if f.name not in ("hour_sin", "hour_cos"):
            for value in (0.0, 0.5, 1.0):
                assert routine_phrase(f.name, value), f.name
    assert routine_phrase("kitchen.fridge.fired_10m", float("nan")) is None
    assert routine_phrase("light", 420.0) is None


def test_a_routine_decision_says_what_happened() -> None:
    names = ["kitchen.fridge.fired_10m", "bathroom.any.active", "hour_sin", "hour_cos"]
    d = audit_pb.Decision(
        model=common_pb2.ModelRef(name="routine"),
        inputs=audit_pb.DecisionInputs(
            feature_names=names,
            tensor=common_pb2.Tensor(shape=[4], float_values=[math.log1p(2), 0.0, *at(7.5)]),
        ),
        explanation=[
            common_pb2.FeatureAttribution(feature="kitchen.fridge.fired_10m", attribution=0.3),
            common_pb2.FeatureAttribution(feature="hour_sin", attribution=0.2),
            common_pb2.FeatureAttribution(feature="bathroom.any.active", attribution=-0.1),
        ],
    )
    assert Why().explain(d, "home") == (
        "The kitchen fridge (used 2 times in the last 10 min) was the main reason."
        " Then the time of day (07:30), the bathroom (quiet now)."
    )
