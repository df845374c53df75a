"""The fleet's result, the safe way back: the DP global model as a TUF-signed release.

A fleet run's report (``report-path``, JSON lines written by ``fleet/server_app.py``)
carries, per released round, the cumulative epsilon at delta and the global head, and a
last line once the run ended (model, base version). From it:

1. :func:`read_run` collects one run's released rounds (nothing else of the report: the
   server never held an individual update, and the report holds none).
2. :func:`build_release` takes the base model (the version the run config names, the
   trunk every hub trained the head on), replaces its head (``mlp.4`` for occupancy) by
   the last released global head, exports it with the shipped exporter (deterministic
   bytes for the same head) and writes a manifest and model card whose release notes say
   where it came from: run id, rounds, hubs per round, epsilon at delta, sigma, C.
3. :func:`publish_run` packs it as a bundle and publishes it in the fleet operator's TUF
   repository (``cli.tuf_repo``: the family key signs it), as the next patch version
   after the base and every published version. Hubs then find it with CheckForUpdates
   and install it like any release: stage (TUF, stage-time checks), shadow, A/B, promote.

Nothing is published for a run without a released round. ``roost fleet serve
--release-repo`` waits for the run's end (:func:`wait_for_run`) and calls
:func:`publish_run`. torch is imported by :func:`build_release` only.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cli.tuf_repo import ModelRepository
from models.manifest import MANIFEST_FILE, load_manifest, sha256_file
from services.kit.errors import FailedPrecondition, InvalidArgument
from services.modelstore.bundle import TargetInfo, pack_bundle, parse_version

CARD_FILE = "MODEL_CARD.md"


@dataclass(frozen=True)
class ReleasedRound:
    """One released round of the report: aggregates only."""

    round: int
    participants: int
    epsilon: float
    delta: float
    noise_multiplier: float
    clip_norm: float
    head: tuple[float, ...]


@dataclass(frozen=True)
class FleetRun:
    """A fleet run that ended, as its report tells it."""

    run: str
    model: str
    base_version: str
    ended: str
    rounds: tuple[ReleasedRound, ...]

    @property
    def head(self) -> npt.NDArray[np.float32]:
        """The global head after the last released round."""
        if not self.rounds:
            raise FailedPrecondition(f"fleet run {self.run} released no round: no model")
        return np.asarray(self.rounds[-1].head, dtype=np.float64).astype(np.float32)

    def notes(self, version: str) -> str:
        """The release notes (the card's first paragraph): where the model came from."""
        last = self.rounds[-1]
        hubs = [r.participants for r in self.rounds]
        per_round = f"{min(hubs)}" if min(hubs) == max(hubs) else f"{min(hubs)}-{max(hubs)}"
        return (
            f"Fleet model {self.model} {version}: the {self.model} {self.base_version} trunk"
            f" with the head of fleet run {self.run}, {len(self.rounds)} rounds of"
            f" {per_round} hubs (FedAvg over SecAgg+, user-level DP): epsilon"
            f" {last.epsilon:.4g} at delta {last.delta:g}, sigma {last.noise_multiplier:g},"
            f" C {last.clip_norm:g}."
        )


def _round(line: dict[str, Any]) -> ReleasedRound:
    return ReleasedRound(
        round=int(line["round"]),
        participants=int(line["participants"]),
        epsilon=float(line["epsilon"]),
        delta=float(line["delta"]),
        noise_multiplier=float(line["noise_multiplier"]),
        clip_norm=float(line["clip_norm"]),
        head=tuple(float(v) for v in line["head"]),
    )


def read_run(report: Path, run_id: str) -> FleetRun | None:
    """Run ``run_id`` of ``report`` once it ended (its last line written), else None."""
    if not report.is_file():
        return None
    rounds: list[ReleasedRound] = []
    # Whole lines only: the ServerApp may be appending the last one right now.
    for text in report.read_text().split("\n")[:-1]:
        if not text.strip():
            continue
        line = json.loads(text)
        if str(line.get("run")) != run_id:
            continue
        if line.get("released") is True:
            rounds.append(_round(line))
        elif "ended" in line:
            return FleetRun(
                run=run_id,
                model=str(line["model"]),
                base_version=str(line["base_version"]),
                ended=str(line["ended"]),
                rounds=tuple(sorted(rounds, key=lambda r: r.round)),
            )
    return None


def wait_for_run(
    report: Path,
    run_id: str,
    *,
    alive: Callable[[], bool],
    stop: threading.Event,
    poll_seconds: float = 1.0,
) -> FleetRun | None:
    """Poll ``report`` until run ``run_id`` ended; None if ``stop`` is set or ``alive``
    (the SuperLink) turns false first."""
    while not stop.is_set():
        run = read_run(report, run_id)
        if run is not None:
            return run
        if not alive():
            return None
        stop.wait(poll_seconds)
    return None


def release_version(base_version: str, published: Sequence[str]) -> str:
    """The next patch version after the base and every ``published`` version: x.y.z
    (never a hub's local x.y.z.n), strictly newer than all of them."""
    newest = max(parse_version(v) for v in [base_version, *published])
    major, minor, patch = [*newest, 0, 0][:3]
    return f"{major}.{minor}.{patch + 1}"


def build_release(run: FleetRun, base_dir: Path, out_dir: Path, version: str) -> Path:
    """The base model at ``base_dir`` with the run's global head, as model ``version``
    in ``out_dir`` (ONNX, manifest, model card). InvalidArgument for a head of the wrong
    size or a non-finite value; FailedPrecondition if ``base_dir`` is not the run's base."""
    from services.personalization.federated_train import HEADS, load_head  # noqa: PLC0415
    from services.personalization.onnx_roundtrip import (  # noqa: PLC0415 - torch
        base_model,
        export_candidate,
    )

    base = load_manifest(base_dir)
    if base.name != run.model or parse_version(base.version) != parse_version(run.base_version):
        raise FailedPrecondition(
            f"{base_dir} holds {base.name} {base.version}; fleet run {run.run} trained the head"
            f" of {run.model} {run.base_version}"
        )
    if run.model not in HEADS:
        raise FailedPrecondition(f"fleet releases exist for {', '.join(HEADS)}, not {run.model}")
    model = base_model(run.model, base_dir / base.file)
    load_head(model, run.model, run.head, f"fleet run {run.run}'s head")
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = f"fleet model {version} (run {run.run}, DP FedAvg head on {base.version})"
    export_candidate(model, out_dir / base.file, run.model, doc=doc)
    raw = json.loads((base_dir / MANIFEST_FILE).read_text())
    if base.canary is not None:
        shutil.copyfile(base_dir / base.canary.file, out_dir / base.canary.file)
    digest = sha256_file(out_dir / base.file)
    last = run.rounds[-1]
    raw.update(
        version=version,
        sha256=digest,
        variants={
            "fp32": {
                "file": base.file,
                "sha256": digest,
                "size_bytes": (out_dir / base.file).stat().st_size,
            }
        },
        # The head learned on households' data has no public identity to hash.
        training_data_sha256="",
        metrics={
            "fleet_rounds": float(len(run.rounds)),
            "fleet_epsilon": round(last.epsilon, 6),
            "fleet_delta": last.delta,
            "fleet_noise_multiplier": last.noise_multiplier,
            "fleet_clip_norm": last.clip_norm,
            "fleet_min_participants": float(min(r.participants for r in run.rounds)),
        },
        description=(
            f"{raw.get('description', '')} Head learned by the fleet (run {run.run}) on"
            f" {base.version}'s trunk with DP FedAvg (epsilon {last.epsilon:.4g},"
            f" delta {last.delta:g})."
        ).strip(),
    )
    (out_dir / MANIFEST_FILE).write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")
    (out_dir / CARD_FILE).write_text(_card(run, version, digest))
    return out_dir


def _card(run: FleetRun, version: str, digest: str) -> str:
    last = run.rounds[-1]
    rounds = "\n".join(f"| {r.round} | {r.participants} | {r.epsilon:.4f} |" for r in run.rounds)
    return f"""# Model card: `{run.model}` {version} (fleet release)

{run.notes(version)}

| | |
|---|---|
| served file | fp32, sha256 `{digest}` |
| base | `{run.model}` {run.base_version}: its trunk, unchanged; the head (last layer) replaced |
| training | fleet run `{run.run}` ({run.ended}): FedAvg of clipped, noised head deltas, SecAgg+ |
| privacy | epsilon {last.epsilon:.4f} at delta {last.delta:g} for the global model, per household |
| mechanism | Gaussian, noise multiplier {last.noise_multiplier:g}, clip norm C {last.clip_norm:g} |

| round | hubs in the sum | cumulative epsilon |
|---|---|---|
{rounds}

Privacy unit: one household. The server held only the securely aggregated sum of each
round; no household's data or update is in this release (docs/fleet.md).
"""


def publish_run(run: FleetRun, base_dir: Path, repo_dir: Path, keys_dir: Path) -> TargetInfo | None:
    """Publish the run's model in the TUF repository; None if no round was released."""
    if not run.rounds:
        return None
    if not all(math.isfinite(v) for v in run.rounds[-1].head):
        raise InvalidArgument(f"fleet run {run.run}'s head: not finite; nothing published")
    repo = ModelRepository.open(repo_dir, keys_dir)
    version = release_version(run.base_version, [t.version for t in repo.targets(run.model)])
    with tempfile.TemporaryDirectory(prefix="roost-fleet-release-") as tmp:
        model_dir = build_release(run, base_dir, Path(tmp) / f"{run.model}-{version}", version)
        bundle = pack_bundle(model_dir, Path(tmp) / f"{run.model}-{version}.tar")
        return repo.publish(run.model, bundle.path, version)
