"""The model manifest: what a model artifact is and what input it accepts.

One JSON file per artifact directory (``<model_dir>/<name>/manifest.json``). The
inference service validates every request against ``input``; the audit log records
``name``/``version``/``sha256``; ``reference`` (optional) holds per-feature training
histograms that the inference service compares live inputs against (drift, PSI/KS).
Torch-free: the serving roles import this module.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

MANIFEST_FILE = "manifest.json"
DType = Literal["float32", "float64", "int64"]
TaskKind = Literal["classification", "regression"]


class ManifestError(ValueError):
    """A manifest is missing, malformed or does not match its artifact."""


@dataclass(frozen=True)
class FeatureInfo:
    name: str
    unit: str = ""


@dataclass(frozen=True)
class InputSchema:
    """The tensor a model accepts, without the batch dimension."""

    name: str
    dtype: DType
    shape: tuple[int, ...]
    features: tuple[FeatureInfo, ...]

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @classmethod
    def float32(
        cls, name: str, shape: tuple[int, ...], names: Sequence[str], units: Sequence[str]
    ) -> InputSchema:
        """A float32 input whose last dimension holds the named features."""
        features = tuple(FeatureInfo(n, u) for n, u in zip(names, units, strict=True))
        return cls(name=name, dtype="float32", shape=tuple(shape), features=features)


@dataclass(frozen=True)
class Variant:
    """One precision of the model (``fp32``, ``int8``): its file and content hash."""

    file: str
    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class CanaryRef:
    """The canary set's file in the artifact directory and its content hash."""

    file: str
    sha256: str


@dataclass(frozen=True)
class FeatureReference:
    """The training distribution of one input feature, for drift monitoring.

    ``edges`` are strictly increasing bin edges (training-data quantiles); they define
    ``len(edges) + 1`` bins with open ends: bin 0 holds values ``<= edges[0]``, bin
    ``i`` values in ``(edges[i-1], edges[i]]``, the last bin values ``> edges[-1]``.
    ``probs`` is the share of training values in each bin (sums to 1).
    """

    edges: tuple[float, ...]
    probs: tuple[float, ...]


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    task_kind: TaskKind
    file: str
    sha256: str
    input: InputSchema
    output_name: str
    # Class names (classification) or output names (regression), in output order.
    output_labels: tuple[str, ...]
    feature_spec: str
    # Per-feature occlusion baseline (e.g. training means), flattened like the input.
    baseline: tuple[float, ...] = ()
    training_data_sha256: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    description: str = ""
    # Every precision shipped, by name; ``file``/``sha256`` above is the served one.
    variants: dict[str, Variant] = field(default_factory=dict)
    # Per input feature name, its training distribution (``models/reference.py``);
    # empty means the model has no drift monitoring.
    reference: dict[str, FeatureReference] = field(default_factory=dict)
    # The release's canary set (``models/canary.py``): inputs with expected outputs that
    # the hub checks the model against before installing it; None: the release has none.
    canary: CanaryRef | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    def files(self) -> dict[str, str]:
        """Every file the manifest names, with its sha256: the served file, the
        variants and the canary set."""
        out = {self.file: self.sha256}
        out |= {v.file: v.sha256 for v in self.variants.values()}
        if self.canary is not None:
            out[self.canary.file] = self.canary.sha256
        return out


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _req(d: dict[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in d:
        raise ManifestError(f"{where}: missing field '{key}'")
    value = d[key]
    if not isinstance(value, kind):
        raise ManifestError(f"{where}: field '{key}' must be {kind.__name__}")
    return value


def parse_manifest(raw: dict[str, Any], where: str = "manifest") -> Manifest:
    inp = _req(raw, "input", dict, where)
    dtype = _req(inp, "dtype", str, f"{where}.input")
    if dtype not in ("float32", "float64", "int64"):
        raise ManifestError(f"{where}.input: unsupported dtype '{dtype}'")
    shape = tuple(int(d) for d in _req(inp, "shape", list, f"{where}.input"))
    if not shape or any(d <= 0 for d in shape):
        raise ManifestError(f"{where}.input: shape must be positive, got {list(shape)}")
    features = tuple(
        FeatureInfo(name=str(f["name"]), unit=str(f.get("unit", "")))
        for f in _req(inp, "features", list, f"{where}.input")
    )
    if len(features) != shape[-1]:
        raise ManifestError(
            f"{where}.input: {len(features)} feature names for last dimension {shape[-1]}"
        )
    task_kind = _req(raw, "task_kind", str, where)
    if task_kind not in ("classification", "regression"):
        raise ManifestError(f"{where}: unknown task_kind '{task_kind}'")
    schema = InputSchema(
        name=_req(inp, "name", str, f"{where}.input"), dtype=dtype, shape=shape, features=features
    )
    baseline = tuple(float(v) for v in raw.get("baseline", []))
    if baseline and len(baseline) != schema.size:
        raise ManifestError(f"{where}: baseline has {len(baseline)} values, input {schema.size}")
    return Manifest(
        name=_req(raw, "name", str, where),
        version=_req(raw, "version", str, where),
        task_kind=task_kind,
        file=_req(raw, "file", str, where),
        sha256=_req(raw, "sha256", str, where),
        input=schema,
        output_name=_req(raw, "output_name", str, where),
        output_labels=tuple(str(x) for x in _req(raw, "output_labels", list, where)),
        feature_spec=_req(raw, "feature_spec", str, where),
        baseline=baseline,
        training_data_sha256=str(raw.get("training_data_sha256", "")),
        metrics={str(k): float(v) for k, v in raw.get("metrics", {}).items()},
        description=str(raw.get("description", "")),
        variants={
            str(k): Variant(
                file=str(v["file"]), sha256=str(v["sha256"]), size_bytes=int(v["size_bytes"])
            )
            for k, v in raw.get("variants", {}).items()
        },
        reference=parse_reference(raw.get("reference", {}), schema, f"{where}.reference"),
        canary=_parse_canary_ref(raw.get("canary"), f"{where}.canary"),
    )


def _parse_canary_ref(raw: Any, where: str) -> CanaryRef | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ManifestError(f"{where}: must be an object with 'file' and 'sha256'")
    return CanaryRef(file=_req(raw, "file", str, where), sha256=_req(raw, "sha256", str, where))


# Probabilities are stored rounded; their sum may miss 1 by this much.
PROBS_SUM_TOLERANCE = 1e-3


def parse_reference(raw: Any, schema: InputSchema, where: str) -> dict[str, FeatureReference]:
    """Check and read a manifest's ``reference``: ``{feature: {"edges": [...], "probs": [...]}}``.

    Every key must be an input feature; edges finite and strictly increasing; one
    probability per bin (``len(edges) + 1``), each in [0, 1], summing to 1.
    """
    if not isinstance(raw, dict):
        raise ManifestError(f"{where}: must be an object of feature name -> histogram")
    names = set(schema.feature_names())
    out: dict[str, FeatureReference] = {}
    for feature, hist in raw.items():
        at = f"{where}.{feature}"
        if feature not in names:
            raise ManifestError(f"{at}: not an input feature of this model")
        if not isinstance(hist, dict):
            raise ManifestError(f"{at}: must be an object with 'edges' and 'probs'")
        raw_edges, raw_probs = _req(hist, "edges", list, at), _req(hist, "probs", list, at)
        try:
            edges = tuple(float(v) for v in raw_edges)
            probs = tuple(float(v) for v in raw_probs)
        except (TypeError, ValueError):
            raise ManifestError(f"{at}: edges and probs must be numbers") from None
        if not edges or not all(math.isfinite(e) for e in edges):
            raise ManifestError(f"{at}: edges must be a non-empty list of finite numbers")
        if any(b <= a for a, b in itertools.pairwise(edges)):
            raise ManifestError(f"{at}: edges must be strictly increasing")
        if len(probs) != len(edges) + 1:
            raise ManifestError(
                f"{at}: {len(probs)} probs for {len(edges) + 1} bins (one more than edges)"
            )
        if not all(0.0 <= p <= 1.0 for p in probs):
            raise ManifestError(f"{at}: probs must be in [0, 1]")
        if abs(sum(probs) - 1.0) > PROBS_SUM_TOLERANCE:
            raise ManifestError(f"{at}: probs sum to {sum(probs):.6f}, not 1")
        out[str(feature)] = FeatureReference(edges=edges, probs=probs)
    return out


def load_manifest(model_dir: Path, *, verify_sha256: bool = True) -> Manifest:
    """Load ``model_dir/manifest.json`` and check the artifact's hash."""
    path = model_dir / MANIFEST_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise ManifestError(f"{path}: not found") from e
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from e
    if not isinstance(raw, dict):
        raise ManifestError(f"{path}: must be a JSON object")
    manifest = parse_manifest(raw, where=str(path))
    if verify_sha256:
        for name, expected in manifest.files().items():
            artifact = model_dir / name
            if not artifact.is_file():
                raise ManifestError(f"{path}: artifact '{name}' not found")
            actual = sha256_file(artifact)
            if actual != expected:
                raise ManifestError(
                    f"{artifact}: sha256 {actual} does not match manifest {expected}"
                )
    return manifest


def shipped_models_dir() -> Path:
    """The artifacts that ship with Roost (``models/artifacts``)."""
    return Path(__file__).resolve().parent / "artifacts"
