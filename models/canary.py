"""The canary set of a release: a few inputs with the outputs the model must give.

A publisher ships it inside the bundle (``canary.json`` beside the ONNX file), named with
its sha256 in the manifest (``"canary": {"file", "sha256"}``), so it is covered by the
bundle's TUF-signed hash. Before the hub installs a release it runs the model on the
canary inputs (``services/update/candidate_check.py``): every output must be finite, and
at least ``min_agreement`` of the rows must match — the expected label for a classifier,
every output within ``tolerance`` for a regressor. It is what tells a model that loads,
has the right schema and answers confidently, but wrongly (e.g. inverted labels), before
it serves anything.

File format (JSON)::

    {"inputs": [[...], ...],              # each row flattened like the model's input
     "labels": ["occupied", ...],         # classifiers: the expected label per row
     "values": [[...], ...],              # regressors: the expected outputs per row
     "tolerance": 0.5, "min_agreement": 1.0}
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.manifest import (
    MANIFEST_FILE,
    CanaryRef,
    Manifest,
    ManifestError,
    parse_manifest,
    sha256_file,
)

CANARY_FILE = "canary.json"
MAX_ROWS = 10_000


@dataclass(frozen=True)
class CanarySet:
    inputs: tuple[tuple[float, ...], ...]
    labels: tuple[str, ...] = ()
    values: tuple[tuple[float, ...], ...] = ()
    tolerance: float = 0.5
    min_agreement: float = 1.0


def _rows(raw: Any, width: int, what: str) -> tuple[tuple[float, ...], ...]:
    if not isinstance(raw, list) or not 0 < len(raw) <= MAX_ROWS:
        raise ManifestError(f"canary: '{what}' must be a list of 1 to {MAX_ROWS} rows")
    rows: list[tuple[float, ...]] = []
    for i, row in enumerate(raw):
        if not isinstance(row, list) or len(row) != width:
            raise ManifestError(f"canary: {what}[{i}] must be a list of {width} numbers")
        try:
            values = tuple(float(v) for v in row)
        except (TypeError, ValueError):
            raise ManifestError(f"canary: {what}[{i}] must hold numbers") from None
        if not all(math.isfinite(v) for v in values):
            raise ManifestError(f"canary: {what}[{i}] must be finite")
        rows.append(values)
    return tuple(rows)


def parse_canary(raw: Any, manifest: Manifest) -> CanarySet:
    """Check a canary set against the model's manifest (widths, labels, thresholds)."""
    if not isinstance(raw, dict):
        raise ManifestError("canary: must be a JSON object")
    inputs = _rows(raw.get("inputs"), manifest.input.size, "inputs")
    tolerance = float(raw.get("tolerance", 0.5))
    min_agreement = float(raw.get("min_agreement", 1.0))
    if not (0.0 <= min_agreement <= 1.0 and tolerance >= 0.0):
        raise ManifestError("canary: min_agreement must be in [0, 1], tolerance >= 0")
    if manifest.task_kind == "classification":
        labels = raw.get("labels")
        if not isinstance(labels, list) or len(labels) != len(inputs):
            raise ManifestError(f"canary: 'labels' must hold one label per input ({len(inputs)})")
        unknown = sorted({str(x) for x in labels} - set(manifest.output_labels))
        if unknown:
            raise ManifestError(f"canary: {len(unknown)} label(s) are not output labels")
        return CanarySet(inputs, labels=tuple(str(x) for x in labels), min_agreement=min_agreement)
    values = _rows(raw.get("values"), len(manifest.output_labels), "values")
    if len(values) != len(inputs):
        raise ManifestError(f"canary: 'values' must hold one row per input ({len(inputs)})")
    return CanarySet(inputs, values=values, tolerance=tolerance, min_agreement=min_agreement)


def load_canary(model_dir: Path, manifest: Manifest) -> CanarySet | None:
    """The canary set the manifest names (its hash already checked by ``load_manifest``)."""
    if manifest.canary is None:
        return None
    try:
        raw = json.loads((model_dir / manifest.canary.file).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"canary: {manifest.canary.file} is not readable JSON") from e
    return parse_canary(raw, manifest)


def attach_canary(
    model_dir: Path,
    inputs: Sequence[Sequence[float]],
    expected: Sequence[str] | Sequence[Sequence[float]],
    *,
    min_agreement: float = 1.0,
    tolerance: float = 0.5,
) -> Manifest:
    """Write ``canary.json`` into the artifact directory and name it in the manifest
    (the publisher's step before bundling). Returns the new manifest."""
    path = model_dir / MANIFEST_FILE
    manifest = parse_manifest(json.loads(path.read_text()), where=str(path))
    raw: dict[str, Any] = {
        "inputs": [[float(v) for v in row] for row in inputs],
        "min_agreement": min_agreement,
    }
    if manifest.task_kind == "classification":
        raw["labels"] = [str(x) for x in expected]
    else:
        raw["values"] = [[float(v) for v in row] for row in expected]
        raw["tolerance"] = tolerance
    parse_canary(raw, manifest)
    (model_dir / CANARY_FILE).write_text(json.dumps(raw, indent=1) + "\n")
    ref = CanaryRef(file=CANARY_FILE, sha256=sha256_file(model_dir / CANARY_FILE))
    manifest = dataclasses.replace(manifest, canary=ref)
    path.write_text(manifest.to_json())
    return manifest
