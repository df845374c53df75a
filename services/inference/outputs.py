"""What a model's outputs may be, and how two versions' outputs are compared.

- **Finite only.** A row whose output holds NaN or infinity is never served: for the
  active version the call fails (:class:`NonFiniteOutput`, ``FAILED_PRECONDITION``; the
  message counts rows, never quotes values), a candidate's row falls back to the active
  version in A/B and counts as an error in shadow. Either way the row counts against
  the version (``errors`` and ``non_finite`` in its health stats).
- **Output distribution.** Each answered row leaves one summary value in its version's
  stats (:func:`summaries`): the label index of a classifier, the first output of a
  regressor. :func:`output_shift` compares a candidate's summaries with the active
  version's over the same window: PSI and KS (``services.inference.drift.psi_ks``) of the
  candidate's histogram against the active one's, over the labels of a classifier or
  ten quantile bins of the active outputs of a regressor. Without homeowners' labels
  this is what says "the candidate answers differently", e.g. a label-inverted model.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from models.manifest import Manifest
from services.inference.drift import psi_ks
from services.kit.errors import FailedPrecondition

REGRESSION_BINS = 10


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
    """One value per row: the label index (classifier) or the first output (regressor)."""
    if m.task_kind == "classification":
        return np.asarray(np.argmax(out, axis=1), dtype=np.float64)
    return np.asarray(out[:, 0], dtype=np.float64)


def output_shift(
    m: Manifest, active: npt.NDArray[np.float64], candidate: npt.NDArray[np.float64]
) -> tuple[float, float]:
    """PSI and KS of the candidate's output summaries against the active version's
    (0, 0 when either has none)."""
    if not len(active) or not len(candidate):
        return 0.0, 0.0
    if m.task_kind == "classification":
        labels = max(len(m.output_labels), int(max(active.max(), candidate.max())) + 1)
        ref = np.bincount(active.astype(np.intp), minlength=labels)
        live = np.bincount(candidate.astype(np.intp), minlength=labels)
    else:
        edges = np.unique(np.quantile(active, np.linspace(0, 1, REGRESSION_BINS + 1)[1:-1]))
        ref = np.bincount(np.searchsorted(edges, active), minlength=len(edges) + 1)
        live = np.bincount(np.searchsorted(edges, candidate), minlength=len(edges) + 1)
    psi, ks = psi_ks(live.astype(np.int64), ref / ref.sum())
    return psi, ks
