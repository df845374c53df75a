"""The plain-language "why" of a decision, for people (Home Assistant shows it).

From the decision's largest attributions and its audited inputs: the input that mattered
most with its value and unit, how that compares with this room's usual level, then the
next ones, e.g.

    Light 420 lx — well above this room's usual level — was the main reason.
    Then CO₂ 950 ppm (above usual), the time of day (21:30).

Display names and units come from ``models/feature_display.json`` (keyed by model and
feature; the shipped manifests stay as they are). The routine model's sensor statistics
(``<area>.<kind>.<statistic>``) are put in words by :mod:`hub.why_routine` ("the kitchen
fridge (used 3 times in the last 10 min)"); any other feature is named from its id. A
window model's value is the window's latest row. "Usual" is this hub's exponentially
weighted mean and spread of the values it decided on for that model, area and feature
(about the last ``horizon`` decisions, in memory: after a restart, nothing is said about
it until ``min_samples`` were seen). The numbers behind it stay in the decision's ``explanation``
(attributions) and its audit record.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import models
from hub.why_routine import routine_phrase
from roost.audit.v1 import audit_service_pb2 as audit_pb

DISPLAY_FILE = Path(models.__file__).resolve().parent / "feature_display.json"
TIME_FEATURES = ("hour_sin", "hour_cos")
# Attributions smaller than this say nothing.
NEGLIGIBLE = 1e-6
# Standard deviations from the usual level: (threshold, words), first match wins.
LEVELS = ((1.5, "well above"), (0.5, "above"), (-0.5, "about"), (-1.5, "below"))


@dataclass(frozen=True)
class Display:
    name: str
    unit: str = ""


def load_display(path: Path = DISPLAY_FILE) -> dict[str, dict[str, Display]]:
    raw = json.loads(path.read_text(encoding="utf-8"))
    return {
        model: {f: Display(d["name"], d.get("unit", "")) for f, d in features.items()}
        for model, features in raw.items()
        if not model.startswith("_")
    }


class UsualLevels:
    """Per key, an exponentially weighted mean and variance of the values observed."""

    def __init__(self, horizon: int = 500, min_samples: int = 20) -> None:
        self._alpha = 2.0 / (horizon + 1)
        self._min = min_samples
        # key -> (samples, mean, variance)
        self._stats: dict[tuple[str, str, str], tuple[int, float, float]] = {}

    def compare(self, key: tuple[str, str, str], value: float) -> str | None:
        """ "well above", "above", "about", "below" or "well below" the usual level;
        None until enough values were seen."""
        n, mean, var = self._stats.get(key, (0, 0.0, 0.0))
        if n < self._min:
            return None
        spread = math.sqrt(var)
        if spread < 1e-9:
            return "about" if abs(value - mean) < 1e-9 else ("above" if value > mean else "below")
        z = (value - mean) / spread
        return next((words for limit, words in LEVELS if z >= limit), "well below")

    def observe(self, key: tuple[str, str, str], value: float) -> None:
        if not math.isfinite(value):
            return
        n, mean, var = self._stats.get(key, (0, value, 0.0))
        # The first few values weigh equally; then the older ones fade.
        alpha = max(self._alpha, 1.0 / (n + 1))
        delta = value - mean
        mean += alpha * delta
        var = (1 - alpha) * (var + alpha * delta * delta)
        self._stats[key] = (n + 1, mean, var)


class Why:
    """Explains decisions; remembers each room's usual levels (one per hub)."""

    def __init__(
        self,
        display: dict[str, dict[str, Display]] | None = None,
        usual: UsualLevels | None = None,
    ) -> None:
        self._display = load_display() if display is None else display
        self._usual = usual or UsualLevels()

    def explain(self, d: audit_pb.Decision, area: str, top: int = 3) -> str:
        """The sentence for decision ``d`` in ``area`` ("" without attributions); then
        its inputs count towards the room's usual levels."""
        model = d.model.name
        values = latest_values(d.inputs)
        parts: list[tuple[str, str | None]] = []
        said: set[str] = set()
        for a in d.explanation:
            if abs(a.attribution) < NEGLIGIBLE or len(parts) == top:
                continue
            feature = "time" if a.feature in TIME_FEATURES else a.feature
            if feature in said:
                continue
            said.add(feature)
            parts.append(self._phrase(model, area, feature, values))
        for feature, value in values.items():
            self._usual.observe((model, area, feature), value)
        if not parts:
            return ""
        (text, level), rest = parts[0], parts[1:]
        main = f"{text} — {level} this room's usual level —" if level else text
        sentence = f"{main[0].upper()}{main[1:]} was the main reason."
        if rest:
            sentence += " Then " + ", ".join(f"{t} ({lv} usual)" if lv else t for t, lv in rest)
            sentence += "."
        return sentence

    def _phrase(
        self, model: str, area: str, feature: str, values: dict[str, float]
    ) -> tuple[str, str | None]:
        """("Light 420 lx", "well above") for one feature (no level without a value)."""
        if feature == "time":
            clock = time_of_day(values)
            return (f"the time of day ({clock})" if clock else "the time of day"), None
        display = self._display.get(model, {}).get(feature)
        value = values.get(feature)
        if display is None and value is not None:
            words = routine_phrase(feature, value)
            if words is not None:
                return words, None
        if display is None or value is None:
            return feature.replace(".", " ").replace("_", " "), None
        level = self._usual.compare((model, area, feature), value)
        return f"{display.name} {number(value, display.unit)}", level


def latest_values(inputs: audit_pb.DecisionInputs) -> dict[str, float]:
    """Feature -> value of the latest row of the decision's input tensor."""
    names = list(inputs.feature_names)
    flat = list(inputs.tensor.float_values)
    if not names or len(flat) < len(names) or len(flat) % len(names):
        return {}
    return dict(zip(names, flat[-len(names) :], strict=True))


def time_of_day(values: dict[str, float]) -> str:
    """ "HH:MM" from the (sin, cos) of the local hour; "" without them."""
    if "hour_sin" not in values or "hour_cos" not in values:
        return ""
    angle = math.atan2(values["hour_sin"], values["hour_cos"]) % (2 * math.pi)
    minutes = round(angle / (2 * math.pi) * 24 * 60) % (24 * 60)
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def number(value: float, unit: str) -> str:
    """A reading as people write it: "420 lx", "22.6 °C", "27%"."""
    size = abs(value)
    text = f"{value:.0f}" if size >= 100 else f"{value:.1f}" if size >= 1 else f"{value:.2g}"
    if not unit:
        return text
    return f"{text}{unit}" if unit == "%" else f"{text} {unit}"
