"""The routine model's sensor statistics in words, for the "why" of a decision.

Its features are ``<area>.<kind>.<statistic>`` (``models/routine``): whether the sensor
is active, how often it fired in the last 1/10/60 minutes (stored as ``log1p(count)``),
how long ago it last fired (``1 - log1p(minutes)/log1p(1440)``), and for ``any`` (every
sensor of the area) whether the area saw the home's latest activity. This module turns
them back into what a person reads: "the kitchen fridge (used 3 times in the last 10
min)", "the bathroom (last used 2 h ago)".
"""

from __future__ import annotations

import math

DAY_MINUTES = 1440.0
KIND_WORDS = {"toilet_flush": "toilet flush", "washing_machine": "washing machine"}


def _place(area: str, kind: str) -> str:
    room = area.replace("_", " ")
    if kind == "any":
        return "anything at home" if area == "home" else f"the {room}"
    thing = KIND_WORDS.get(kind, kind.replace("_", " "))
    return f"the {thing}" if area == "home" else f"the {room} {thing}"


def _ago(minutes: float) -> str:
    if minutes < 1.5:
        return "just now"
    if minutes < 90:
        return f"{minutes:.0f} min ago"
    return f"{minutes / 60:.0f} h ago"


def _fired(place: str, minutes: str, value: float) -> str:
    count = round(math.expm1(max(value, 0.0)))
    span = f"the last {minutes} min"
    if count == 0:
        return f"{place} (not used in {span})"
    return f"{place} (used {'once' if count == 1 else f'{count} times'} in {span})"


def _recency(place: str, value: float) -> str:
    if value <= 0.0:
        return f"{place} (not used for a day or more)"
    minutes = math.expm1((1.0 - min(value, 1.0)) * math.log1p(DAY_MINUTES))
    return f"{place} (last used {_ago(minutes)})"


def _last(place: str, value: float) -> str:
    room = place.removeprefix("the ")
    where = "in" if value >= 0.5 else "not in"
    return f"the latest activity, {where} the {room}"


def routine_phrase(feature: str, value: float) -> str | None:
    """The words for one routine feature and its value; None if ``feature`` is not one."""
    parts = feature.split(".")
    if len(parts) != 3 or not math.isfinite(value):
        return None
    area, kind, stat = parts
    place = _place(area, kind)
    minutes = stat[6:-1] if stat.startswith("fired_") and stat.endswith("m") else ""
    if stat == "active":
        words = f"{place} (active now)" if value >= 0.5 else f"{place} (quiet now)"
    elif minutes.isdigit():
        words = _fired(place, minutes, value)
    elif stat == "recency":
        words = _recency(place, value)
    elif stat == "last":
        words = _last(place, value)
    else:
        return None
    return words
