"""Occlusion attributions, computed in one batched onnxruntime call.

For an input ``x`` and each feature ``j``, replace feature ``j`` (in every time step)
by its baseline value and measure how the explained output drops:
``attribution_j = f(x)[k] - f(x with j occluded)[k]``, where ``k`` is the predicted
class (classifiers) or the first output (regressors). A feature the model ignores
gets exactly 0.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from models.manifest import Manifest


def occlusion_batch(manifest: Manifest, x: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
    """[x, x_occ_0, ..., x_occ_{n-1}] as one batch."""
    n = len(manifest.input.features)
    if manifest.baseline:
        baseline = np.asarray(manifest.baseline, dtype=x.dtype).reshape(x.shape)
    else:
        baseline = np.zeros_like(x)
    batch = np.repeat(x[None, ...], n + 1, axis=0)
    for j in range(n):
        batch[j + 1, ..., j] = baseline[..., j]
    return batch


def attributions(manifest: Manifest, outputs: npt.NDArray[np.float32]) -> tuple[int, list[float]]:
    """(explained output index, per-feature attribution) from the occlusion batch's outputs."""
    target = int(np.argmax(outputs[0])) if manifest.task_kind == "classification" else 0
    deltas = outputs[0, target] - outputs[1:, target]
    return target, [float(d) for d in deltas]
