"""Calibration and operating-point figures of an occupancy model (torch-free).

:func:`fit_platt` fits Platt scaling, ``P(occupied) = sigmoid(a * z + b)`` on the
model's logit margin ``z = logit(occupied) - logit(vacant)``, on validation rows; with
calibrated probabilities 0.5 is the operating point that minimizes expected errors.
:func:`split_figures` gives what the model card and the rule comparison report per
split: accuracy, false "occupied" and "vacant" rows, false alarms per day, and the
expected calibration error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

F64Array = npt.NDArray[np.float64]
I64Array = npt.NDArray[np.int64]
SECONDS_PER_DAY = 86_400.0


@dataclass(frozen=True)
class Platt:
    """``P(occupied) = sigmoid(a * z + b)`` on the logit margin ``z``."""

    a: float
    b: float

    def probability(self, z: npt.ArrayLike) -> F64Array:
        margin = self.a * np.asarray(z, dtype=np.float64) + self.b
        return np.asarray(0.5 * (1.0 + np.tanh(0.5 * margin)), dtype=np.float64)


def fit_platt(z: npt.ArrayLike, y: npt.ArrayLike, *, l2: float = 1e-6, steps: int = 100) -> Platt:
    """Maximum-likelihood Platt scaling by Newton's method (deterministic).

    ``z``: logit margins of the validation rows; ``y``: their 0/1 labels. ``l2`` keeps
    the fit finite when the rows are perfectly separated."""
    zs = np.asarray(z, dtype=np.float64)
    ys = np.asarray(y, dtype=np.float64)
    if zs.shape != ys.shape or zs.ndim != 1 or len(zs) == 0:
        raise ValueError(f"need one label per margin, got {zs.shape} and {ys.shape}")
    design = np.stack([zs, np.ones_like(zs)], axis=1)

    def loss(w: F64Array) -> float:
        m = design @ w
        return float(np.sum(np.logaddexp(0.0, m) - ys * m) + 0.5 * l2 * float(w @ w))

    w = np.array([1.0, 0.0])
    current = loss(w)
    for _ in range(steps):
        p = 0.5 * (1.0 + np.tanh(0.5 * (design @ w)))  # sigmoid without overflow
        grad = design.T @ (p - ys) + l2 * w
        hess = (design * (p * (1.0 - p))[:, None]).T @ design + l2 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        scale = 1.0  # halve the Newton step until the loss does not rise
        while scale > 1e-8 and loss(w - scale * step) > current:
            scale *= 0.5
        w = w - scale * step
        previous, current = current, loss(w)
        if previous - current < 1e-12 * max(1.0, abs(current)):
            break
    return Platt(a=float(w[0]), b=float(w[1]))


def expected_calibration_error(p: npt.ArrayLike, y: npt.ArrayLike, bins: int = 10) -> float:
    """Row-weighted mean |observed occupied rate - mean P(occupied)| over equal-width bins."""
    ps = np.asarray(p, dtype=np.float64)
    ys = np.asarray(y, dtype=np.float64)
    which = np.minimum((ps * bins).astype(np.int64), bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += float(mask.sum()) * abs(float(ys[mask].mean()) - float(ps[mask].mean()))
    return total / len(ps)


def span_days(ts: npt.ArrayLike) -> float:
    """Days a run of one-minute rows covers (the last row's minute included)."""
    t = np.asarray(ts, dtype=np.float64)
    return float((t[-1] - t[0] + 60.0) / SECONDS_PER_DAY)


def split_figures(
    pred: npt.ArrayLike, y: npt.ArrayLike, ts: npt.ArrayLike, p: npt.ArrayLike | None = None
) -> dict[str, float]:
    """Accuracy, false "occupied"/"vacant" rows and false alarms per day of 0/1
    predictions ``pred`` on rows ``y`` at times ``ts``; with probabilities ``p``, the
    expected calibration error too."""
    pr = np.asarray(pred, dtype=np.int64)
    ys = np.asarray(y, dtype=np.int64)
    fp = int(np.sum((pr == 1) & (ys == 0)))
    out = {
        "accuracy": float(np.mean(pr == ys)),
        "false_occupied": float(fp),
        "false_vacant": float(np.sum((pr == 0) & (ys == 1))),
        "false_alarms_per_day": fp / span_days(ts),
    }
    if p is not None:
        out["ece"] = expected_calibration_error(p, ys)
    return out
