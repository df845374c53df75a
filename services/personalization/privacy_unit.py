"""The privacy unit: what one differentially private guarantee protects.

Roost offers two units for the household budget (``[personalization] privacy_unit``):

* ``"day"`` (the default): a **household-day**, every labelled row observed in one UTC
  calendar day. ε bounds how much a training run can reveal about anything that
  happened on any one day, however many rows that day produced. DP-SGD Poisson-samples
  days, averages each sampled day's per-example gradients, clips each day's average to
  the clipping norm and noises their sum (:mod:`services.personalization.dp_sgd`).
* ``"example"``: one labelled row. Cheaper in utility, but a household produces
  hundreds of correlated rows a day, and a guarantee per row says little about a day
  (group privacy grows with the number of rows).

δ is chosen from the largest number of units a run can ever see (:func:`derived_delta`):
δ ≤ 1 / (10 · n_max), with n_max the calendar days a retention window can touch (one
more than its length), times :data:`MAX_ROWS_PER_DAY` for the example unit. A run with
more units than 1 / (10 · δ) is refused (:func:`check_units`).
"""

from __future__ import annotations

import math
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

from services.kit.errors import FailedPrecondition

PrivacyUnit = Literal["day", "example"]
UNITS: Final[tuple[str, ...]] = ("day", "example")
#: How each unit is named to a homeowner (CLI, Home Assistant, docs).
DESCRIPTIONS: Final[dict[str, str]] = {
    "day": "household-day",
    "example": "example (one labelled row)",
}
#: The most rows one day can add for the example unit's δ: one labelled row a minute,
#: the finest window of Roost's models.
MAX_ROWS_PER_DAY: Final = 1440
_US_PER_DAY: Final = 86_400_000_000

I64Array = npt.NDArray[np.int64]


def max_units(unit: str, retention_days: float) -> int:
    """The most units one run can see: the UTC days a retention window can touch
    (``ceil(retention_days) + 1``), times :data:`MAX_ROWS_PER_DAY` for examples."""
    days = math.ceil(retention_days) + 1
    return days if unit == "day" else days * MAX_ROWS_PER_DAY


def derived_delta(unit: str, retention_days: float) -> float:
    """The largest power of ten ≤ 1 / (10 · :func:`max_units`)."""
    bound = 1.0 / (10 * max_units(unit, retention_days))
    return float(10.0 ** math.floor(math.log10(bound)))


def check_units(unit: str, n_units: int, delta: float) -> None:
    """Refuses a run whose ``n_units`` private units make δ too large (n·δ > 1/10)."""
    if n_units * delta * 10 > 1 + 1e-9:
        noun = "days" if unit == "day" else "examples"
        raise FailedPrecondition(
            f"the training set has {n_units} {noun}, more than 1/(10·delta) for delta"
            f" {delta:g}: lower personalization.delta or retention_days"
        )


def day_of(observed_at_us: npt.ArrayLike) -> I64Array:
    """The UTC day number (days since the Unix epoch) of each observation time (µs)."""
    return np.floor_divide(np.asarray(observed_at_us, dtype=np.int64), _US_PER_DAY)


def unit_index(days: npt.ArrayLike) -> tuple[I64Array, int]:
    """Each row's unit as ``0..n-1`` (in order of day) and ``n``, the number of days."""
    uniq, index = np.unique(np.asarray(days, dtype=np.int64), return_inverse=True)
    return index.astype(np.int64).reshape(-1), len(uniq)


def replay_units(n_rows: int, n_units: int, first: int) -> I64Array:
    """Public replay rows split into ``n_units`` pseudo-days numbered from ``first``
    (contiguous, sizes differing by at most one), so that replay weighs what it weighs
    in the example unit: as many units as the private ones."""
    if n_rows == 0 or n_units == 0:
        return np.zeros(0, dtype=np.int64)
    n_units = min(n_units, n_rows)
    return (first + (np.arange(n_rows, dtype=np.int64) * n_units) // n_rows).astype(np.int64)
