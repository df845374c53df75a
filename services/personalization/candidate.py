"""A finished job's model as a local candidate: versioned, described, packed and signed.

The candidate is the base version's manifest with a *local version* ``<active
x.y.z>.<n>`` (:func:`next_local_version`), the new file hash and the DP metrics, plus a
model card (:func:`write_candidate`). :func:`pack_and_sign` packs it as a bundle and signs
it with the hub's local-candidate key, ready to be staged with the update service; it
stays a candidate there (shadow, A/B and promotion are the update service's business).
"""

from __future__ import annotations

import json
from pathlib import Path

from models.manifest import MANIFEST_FILE, sha256_file
from services.kit.errors import FailedPrecondition
from services.modelstore import local_key
from services.modelstore.bundle import pack_bundle, parse_version
from services.modelstore.reader import RegistryReader
from services.personalization import worker
from services.personalization.job_table import JobRecord


def next_local_version(registry: RegistryReader, model: str, active: str) -> str:
    """``<active x.y.z>.<n>`` with the next free ``n`` among installed versions."""
    parse_version(active)
    base = ".".join([*active.split("."), "0", "0"][:3])
    taken = [0]
    for info in registry.versions(model):
        parts = info.version.split(".")
        if len(parts) == 4 and ".".join(parts[:3]) == base:
            taken.append(int(parts[3]))
    version = f"{base}.{max(taken) + 1}"
    # Not local_key.local_version: it checks len(parse_version(base)) == 3, which
    # parse_version's trailing-zero stripping breaks for e.g. "1.0.0".
    if not local_key.is_local_version(version):
        raise FailedPrecondition(f"cannot derive a local version from {active}")
    return version


def pack_and_sign(
    model_dir: Path, bundle_path: Path, *, key_path: Path, model: str, version: str
) -> tuple[bytes, bytes]:
    """The bundle of ``model_dir`` (written to ``bundle_path``) and its signature by the
    hub's local-candidate key; FailedPrecondition if the hub has no such key."""
    bundle = pack_bundle(model_dir, bundle_path).path.read_bytes()
    try:
        key = local_key.load_private(key_path)
    except ValueError as e:
        raise FailedPrecondition(
            "no local-candidate signing key on this hub (roost certs init)"
        ) from e
    return bundle, local_key.sign(key, model, version, bundle)


def write_candidate(
    model_dir: Path,
    *,
    base_dir: Path,
    version: str,
    job: JobRecord,
    plan: worker.Plan,
    epsilon: float,
    delta: float,
    accountant: str,
    metric: str,
) -> None:
    """The manifest and model card of a local candidate beside its exported ONNX.

    The manifest is the base version's with the new version, file hash and metrics: the
    input schema, labels and the public drift reference are unchanged (the candidate
    serves the same inputs). ``training_data_sha256`` is cleared: the household data has
    no public identity, and a hash of it would only help confirm a guess of it.
    """
    raw = json.loads((base_dir / MANIFEST_FILE).read_text())
    onnx_name = str(raw["file"])
    onnx_path = model_dir / onnx_name
    if not onnx_path.is_file():
        raise FailedPrecondition("the training run exported no model")
    digest = sha256_file(onnx_path)
    size = onnx_path.stat().st_size
    raw.update(
        version=version,
        sha256=digest,
        variants={"fp32": {"file": onnx_name, "sha256": digest, "size_bytes": size}},
        training_data_sha256="",
        metrics={
            "dp_epsilon": round(epsilon, 6),
            "dp_delta": delta,
            "dp_noise_multiplier": round(plan.noise_multiplier, 6),
            "dp_sample_rate": round(plan.sample_rate, 6),
            "dp_steps": float(job.steps_done or 0),
            "base_task_metric_before": round(job.metric_before, 6),
            "base_task_metric_after": round(job.metric_after, 6),
        },
        description=(
            f"{raw.get('description', '')} Personalized on this hub from {raw['version']}"
            f" with DP-SGD (epsilon {epsilon:.3g}, delta {delta:g})."
        ).strip(),
    )
    (model_dir / MANIFEST_FILE).write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")
    steps = f"{job.steps_done} of {plan.steps} planned steps"
    forgetting = (
        f"{job.metric_before:.4f} before, {job.metric_after:.4f} after ({metric})"
        if metric
        else "not measured (no public base-task data on this hub)"
    )
    card = f"""# Model card: `{raw["name"]}` {version} (local candidate)

Personalized on this hub from `{raw["name"]}` {".".join(version.split(".")[:3])} by the
personalization service (job `{job.job_id}`). It never left the hub and is a candidate
only: it serves after shadow/A-B and a promotion, like any update.

| | |
|---|---|
| served file | `{onnx_name}` (fp32), sha256 `{digest}` |
| training | DP-SGD (Opacus), distillation to the base model{", public replay" if metric else ""} |
| privacy | epsilon {epsilon:.4f} at delta {delta:g} ({accountant} accountant), per example |
| mechanism | noise {plan.noise_multiplier:.4f}, sample rate {plan.sample_rate:.4f}, {steps} |
| base-task accuracy | {forgetting} |

Privacy unit: one labelled example of the household. The training data stays on the hub;
see docs/personalization.md for what record-level DP does and does not protect.
"""
    (model_dir / "MODEL_CARD.md").write_text(card)
