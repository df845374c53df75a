"""What a model's outputs may be, and how two versions' outputs are compared.

- **Finite only.** A row whose output holds NaN or infinity is never served: for the
  active version the call fails (:class:`NonFiniteOutput`, ``FAILED_PRECONDITION``; the
  message counts rows, never quotes values), a candidate's row falls back to the active
  version in A/B and counts as an error in shadow. Either way the row counts against
  the version (``errors`` and ``non_finite`` in its health stats).
- **Output distribution.** Each answered row leaves a summary in its version's stats
  (:func:`summaries`): a classifier's label index and its confidence (the largest class
  probability), a regressor's first output. :func:`output_shift` compares a candidate's
  summaries with the active version's over the same window: PSI and KS
  (``services.inference.drift.psi_ks``) of the candidate's histogram against the active
  one's, over the labels of a classifier or ten quantile bins of the active outputs of a
  regressor; and for a classifier the same over ten quantile bins of the active
  confidences (calibration: a model that keeps every label but answers 0.51 where the
  active one said 0.95). Without homeowners' labels this is what says "the candidate
  answers differently", e.g. a label-inverted model or a collapsed confidence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from models.manifest import Manifest
from services.inference.drift import psi_ks
from services.kit.errors import FailedPrecondition

# Quantile bins of the active version's outputs (a regressor's, a classifier's confidence).
QUANTILE_BINS = 10


class NonFiniteOutput(FailedPrecondition):
    """A version answered NaN or infinity for some rows; nothing of the call is served."""


def finite_rows(out: npt.NDArray[np.float32]) -> npt.NDArray[np.bool_]:
    """Per row, whether every output is finite."""
    return np.asarray(np.isfinite(out).all(axis=1))


def non_finite_error(m: Manifest, bad: int, total: int) -> NonFiniteOutput:
    return NonFiniteOutput(
        f"model {m.name} {m.version} produced non-finite outputs (NaN or infinity) for"
        f" {bad} of {total} inputs; not served"
    )


def summaries(m: Manifest, out: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """Per row: the label index and the confidence (largest class probability) of a
    classifier, shape (n, 2); the first output of a regressor, shape (n, 1)."""
    if m.task_kind == "classification":
        return np.column_stack([np.argmax(out, axis=1), np.max(out, axis=1)]).astype(np.float64)
    return np.asarray(out[:, :1], dtype=np.float64)


@dataclass(frozen=True)
class OutputShift:
    """A candidate's outputs against the active version's (0 when either has none)."""

    psi: float = 0.0
    ks: float = 0.0
    # Classifiers: the confidence distributions (samples 0 for a regressor).
    confidence_psi: float = 0.0
    confidence_ks: float = 0.0
    confidence_samples: int = 0


def _binned(
    active: npt.NDArray[np.float64], candidate: npt.NDArray[np.float64]
) -> tuple[float, float]:
    """PSI and KS of ``candidate`` over ten quantile bins of ``active``."""
    edges = np.unique(np.quantile(active, np.linspace(0, 1, QUANTILE_BINS + 1)[1:-1]))
    ref = np.bincount(np.searchsorted(edges, active), minlength=len(edges) + 1)
    live = np.bincount(np.searchsorted(edges, candidate), minlength=len(edges) + 1)
    return psi_ks(live.astype(np.int64), ref / ref.sum())


def output_shift(
    m: Manifest, active: npt.NDArray[np.float64], candidate: npt.NDArray[np.float64]
) -> OutputShift:
    """The candidate's output summaries (:func:`summaries` rows) against the active
    version's: labels and confidences of a classifier, the first output of a regressor."""
    if not len(active) or not len(candidate):
        return OutputShift()
    if m.task_kind != "classification":
        psi, ks = _binned(active[:, 0], candidate[:, 0])
        return OutputShift(psi, ks)
    a_labels, c_labels = active[:, 0].astype(np.intp), candidate[:, 0].astype(np.intp)
    labels = max(len(m.output_labels), int(max(a_labels.max(), c_labels.max())) + 1)
    ref = np.bincount(a_labels, minlength=labels)
    live = np.bincount(c_labels, minlength=labels)
    psi, ks = psi_ks(live.astype(np.int64), ref / ref.sum())
    confidence_psi, confidence_ks = _binned(active[:, 1], candidate[:, 1])
    return OutputShift(psi, ks, confidence_psi, confidence_ks, len(candidate))
