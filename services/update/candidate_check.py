"""Stage-time checks of a candidate, before anything of it is written to the registry.

:func:`check_candidate` is a pure function of a verified, unpacked model directory (TUF
or the hub key already checked: nothing unverified is ever run) and the active
version's manifest. The installer calls it between unpacking and installing; it raises
``FailedPrecondition`` with every reason, or returns what it checked, with counts:

1. **It loads**: onnxruntime opens the graph.
2. **Its graph matches its manifest**: the manifest's input exists with its dtype and
   shape (the batch dimension free), the graph wants no other input, and the manifest's
   output exists with one value per output label.
3. **It keeps the active model's contract**: same input (name, dtype, shape, feature
   names), task kind, output labels and feature spec: what the hub feeds it and reads
   from it must not change under a new version.
4. **It runs**: on the manifest's occlusion baseline (or zeros), every output finite.
5. **Its signed canary set** (``models/canary.py``), when the release ships one: every
   output finite, and at least ``min_agreement`` of the rows as expected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from models.canary import CanarySet, load_canary
from models.manifest import Manifest, ManifestError, load_manifest
from models.onnx_runtime import open_session
from services.kit.errors import FailedPrecondition

_ONNX_TYPES = {"float32": "tensor(float)", "float64": "tensor(double)", "int64": "tensor(int64)"}
_NP_TYPES = {"float32": np.float32, "float64": np.float64, "int64": np.int64}


def _short(e: Exception, model_dir: Path | None = None) -> str:
    """The error's type and first line, without the hub's temporary path."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if model_dir is not None:
        text = text.replace(f"{model_dir}/", "").replace(str(model_dir), "")
    return f"{type(e).__name__}: {text[:200]}"


def graph_problems(m: Manifest, session: Any) -> list[str]:
    """Where the ONNX graph disagrees with its manifest."""
    problems: list[str] = []
    inputs = {i.name: i for i in session.get_inputs()}
    spec = inputs.get(m.input.name)
    if spec is None:
        problems.append(f"the graph has no input '{m.input.name}' (has {sorted(inputs)})")
    else:
        if spec.type != _ONNX_TYPES[m.input.dtype]:
            problems.append(
                f"input '{m.input.name}' is {spec.type}, the manifest says {m.input.dtype}"
            )
        dims = list(spec.shape)[1:]
        if len(dims) != len(m.input.shape) or any(
            isinstance(d, int) and d != want for d, want in zip(dims, m.input.shape, strict=False)
        ):
            problems.append(
                f"input '{m.input.name}' has shape {list(spec.shape)}, the manifest says"
                f" [batch, {', '.join(map(str, m.input.shape))}]"
            )
    extra = sorted(set(inputs) - {m.input.name})
    if extra:
        problems.append(f"the graph wants inputs the manifest does not describe: {extra}")
    outputs = {o.name: o for o in session.get_outputs()}
    out = outputs.get(m.output_name)
    if out is None:
        problems.append(f"the graph has no output '{m.output_name}' (has {sorted(outputs)})")
    elif (
        m.output_labels
        and isinstance(last := list(out.shape)[-1], int)
        and last != len(m.output_labels)
    ):
        problems.append(
            f"output '{m.output_name}' has {last} values, the manifest names"
            f" {len(m.output_labels)} labels"
        )
    return problems


def contract_problems(m: Manifest, active: Manifest) -> list[str]:
    """Where the candidate's manifest breaks the active version's contract."""
    against = f"active {active.version}"
    problems: list[str] = []
    if m.input != active.input:
        problems.append(
            f"input {m.input.name} {m.input.dtype} {list(m.input.shape)}"
            f" ({', '.join(m.input.feature_names())}) differs from {against}'s"
            f" {active.input.name} {active.input.dtype} {list(active.input.shape)}"
            f" ({', '.join(active.input.feature_names())})"
        )
    if m.task_kind != active.task_kind:
        problems.append(f"task kind {m.task_kind} differs from {against}'s {active.task_kind}")
    if m.output_labels != active.output_labels:
        problems.append(
            f"output labels {list(m.output_labels)} differ from {against}'s"
            f" {list(active.output_labels)}"
        )
    if m.feature_spec != active.feature_spec:
        problems.append(
            f"feature spec {m.feature_spec} differs from {against}'s {active.feature_spec}"
        )
    return problems


def _run(m: Manifest, session: Any, rows: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    x = rows.astype(_NP_TYPES[m.input.dtype]).reshape((len(rows), *m.input.shape))
    (out,) = session.run([m.output_name], {m.input.name: x})
    return np.asarray(out, dtype=np.float32).reshape(len(rows), -1)


def canary_matches(m: Manifest, canary: CanarySet, out: npt.NDArray[np.float32]) -> int:
    """Rows of the canary set whose output is as expected."""
    if m.task_kind == "classification":
        got = [m.output_labels[k] if k < len(m.output_labels) else "" for k in out.argmax(axis=1)]
        return sum(g == want for g, want in zip(got, canary.labels, strict=True))
    expected = np.asarray(canary.values, dtype=np.float64)
    if out.shape != expected.shape:
        return 0
    return int((np.abs(out - expected).max(axis=1) <= canary.tolerance).sum())


def _behaviour(m: Manifest, session: Any, model_dir: Path) -> tuple[list[str], str]:
    """Problems and the canary's count from running the model."""
    baseline = np.asarray(m.baseline or [0.0] * m.input.size, dtype=np.float64)[None, :]
    try:
        if not np.isfinite(_run(m, session, baseline)).all():
            return ["it answers NaN or infinity on the manifest's baseline input"], ""
    except Exception as e:
        return [f"it fails on the manifest's baseline input ({_short(e)})"], ""
    canary = load_canary(model_dir, m)
    if canary is None:
        return [], "no canary set in the release"
    out = _run(m, session, np.asarray(canary.inputs, dtype=np.float64))
    n = len(canary.inputs)
    bad = int((~np.isfinite(out).all(axis=1)).sum())
    if bad:
        return [f"canary: {bad:,} of {n:,} rows answered NaN or infinity"], ""
    matched = canary_matches(m, canary, out)
    text = f"canary: {matched:,} of {n:,} rows as expected (minimum {canary.min_agreement:.0%})"
    if matched < canary.min_agreement * n:
        return [text], ""
    return [], text


def check_candidate(model_dir: Path, active: Manifest | None) -> str:
    """Refuse (``FailedPrecondition``, every reason) or describe what passed."""
    try:
        m = load_manifest(model_dir)
    except ManifestError as e:
        raise FailedPrecondition(f"candidate refused: its manifest: {e}") from None
    where = f"candidate {m.name} {m.version} refused"
    try:
        session = open_session(model_dir / m.file)
    except Exception as e:
        raise FailedPrecondition(f"{where}: it cannot be loaded ({_short(e, model_dir)})") from None
    problems = graph_problems(m, session)
    if active is not None:
        problems += contract_problems(m, active)
    canary_text = ""
    if not problems:
        try:
            problems, canary_text = _behaviour(m, session, model_dir)
        except ManifestError as e:
            problems = [str(e)]
    if problems:
        raise FailedPrecondition(f"{where}: " + "; ".join(problems))
    contract = f" and active {active.version}'s contract" if active is not None else ""
    return f"loads; graph matches its manifest{contract}; runs finite; {canary_text}"
