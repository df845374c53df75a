"""Occlusion attributions, computed in one batched onnxruntime call.

For an input ``x`` and each feature ``j``, replace feature ``j`` (in every time step)
by its baseline value and measure how the explained output drops:
``attribution_j = f(x)[k] - f(x with j occluded)[k]``, where ``k`` is the predicted
class (classifiers) or the first output (regressors). A feature the model ignores
gets exactly 0.

A batch of ``n`` inputs becomes one block of ``n_features + 1`` rows per input, the
input itself first (:func:`occlusion_rows`): the first row of each block is the
prediction, so one session.run answers both the predictions and their explanations.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from models.manifest import Manifest


def block_width(manifest: Manifest) -> int:
    """Rows per input in an occlusion batch: the input, then one per occluded feature."""
    return len(manifest.input.features) + 1


def occlusion_rows(manifest: Manifest, batch: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
    """For each input of ``batch`` (leading dimension), [x, x_occ_0, ..., x_occ_{n-1}]."""
    n = len(manifest.input.features)
    sample = batch.shape[1:]
    if manifest.baseline:
        baseline = np.asarray(manifest.baseline, dtype=batch.dtype).reshape(sample)
    else:
        baseline = np.zeros(sample, dtype=batch.dtype)
    rows = np.repeat(batch[:, None, ...], n + 1, axis=1)
    for j in range(n):
        rows[:, j + 1, ..., j] = baseline[..., j]
    return rows.reshape(len(batch) * (n + 1), *sample)


def occlusion_batch(manifest: Manifest, x: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
    """[x, x_occ_0, ..., x_occ_{n-1}] as one batch."""
    return occlusion_rows(manifest, x[None, ...])


def block_attributions(
    manifest: Manifest, outputs: npt.NDArray[np.float32]
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float32]]:
    """(explained output index per input, attributions ``(inputs, features)``) from the
    outputs of an :func:`occlusion_rows` batch."""
    width = block_width(manifest)
    blocks = outputs.reshape(len(outputs) // width, width, -1)
    first = blocks[:, 0, :]
    if manifest.task_kind == "classification":
        target = np.argmax(first, axis=1)
    else:
        target = np.zeros(len(blocks), dtype=np.intp)
    picked = np.take_along_axis(blocks, target[:, None, None], axis=2)[:, :, 0]
    return target, picked[:, :1] - picked[:, 1:]


def attributions(manifest: Manifest, outputs: npt.NDArray[np.float32]) -> tuple[int, list[float]]:
    """(explained output index, per-feature attribution) from the occlusion batch's outputs."""
    target, deltas = block_attributions(manifest, outputs)
    return int(target[0]), [float(d) for d in deltas[0]]


def top_features(deltas: npt.NDArray[np.float32], k: int) -> npt.NDArray[np.intp]:
    """Per input, the indices of the ``k`` largest attributions by magnitude (ties in
    feature order)."""
    return np.argsort(-np.abs(deltas), axis=1, kind="stable")[:, :k]
