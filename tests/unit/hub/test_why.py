"""The "why" in words: names, values and units, the room's usual level, the time of day."""

from __future__ import annotations

import json
import math
import random

import pytest

from hub.why import DISPLAY_FILE, UsualLevels, Why, load_display, number, time_of_day
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
