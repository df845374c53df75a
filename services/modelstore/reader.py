"""Reading the model store: which version serves, and the verified versions on disk.

Inference (and personalization) only ever read the store; the update service is its
only writer (:class:`services.modelstore.registry.Registry` adds the writing half, under
a per-model lock). The layout and crash-safety argument are in ``registry.py``: a reader
reads ``state.json`` and the version directories it names, and sees either the old
slots or the new ones, never half of a change.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from models.manifest import Manifest, ManifestError, load_manifest
from services.kit.errors import FailedPrecondition, InvalidArgument, NotFound, echo
from services.modelstore.bundle import check_family, parse_version

logger = logging.getLogger(__name__)

STATE_FILE = "state.json"
PROVENANCE_FILE = "provenance.json"
VERSIONS_DIR = "versions"
Source = Literal["shipped", "tuf", "local"]
Stage = Literal["none", "staged", "shadow", "ab"]
STAGES: tuple[Stage, ...] = ("none", "staged", "shadow", "ab")
SOURCES: tuple[Source, ...] = ("shipped", "tuf", "local")


@dataclass(frozen=True)
class SlotState:
    """Which version of a model is in which slot, and how far its rollout is."""

    active: str | None = None
    candidate: str | None = None
    previous: str | None = None
    # Rollout of the candidate: none (no candidate), staged, shadow, ab.
    stage: Stage = "none"
    # A/B: share of entities the candidate serves, in (0, 1].
    share: float = 0.0
    stage_started_at: str = ""
    generation: int = 0
    # The version most recently rolled back (withdrawn candidate or replaced active):
    # not offered as an update again until staged once more.
    rolled_back: str | None = None

    def to_json(self) -> bytes:
        return (json.dumps(asdict(self), indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> SlotState:
        try:
            data = json.loads(raw)
            state = cls(**data)
        except (ValueError, TypeError) as e:
            raise FailedPrecondition(f"{where}: not a valid registry state ({e})") from None
        state.check(where)
        return state

    def check(self, where: str) -> None:
        """FailedPrecondition unless the slots are consistent."""
        problems = []
        if self.stage not in STAGES:
            problems.append(f"unknown stage {self.stage!r}")
        if (self.candidate is None) != (self.stage == "none"):
            problems.append(f"stage {self.stage!r} with candidate {self.candidate!r}")
        if self.stage == "ab" and not 0 < self.share <= 1:
            problems.append(f"A/B share {self.share} is not in (0, 1]")
        if self.candidate is not None and self.candidate == self.active:
            problems.append("candidate equals active")
        if problems:
            raise FailedPrecondition(f"{where}: inconsistent registry state: {'; '.join(problems)}")


@dataclass(frozen=True)
class VersionInfo:
    name: str
    version: str
    sha256: str
    source: Source
    staged_at: str
    path: Path


class RegistryReader:
    """The store under ``root``, read-only: any number of readers, in any process."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def models(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.parent.name for p in self.root.glob(f"*/{STATE_FILE}"))

    def state(self, name: str) -> SlotState:
        """The slots of ``name`` (all empty if it has none yet)."""
        path = self._model_dir(name) / STATE_FILE
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return SlotState()
        return SlotState.from_json(raw, str(path))

    def version_dir(self, name: str, version: str) -> Path:
        return self._model_dir(name) / VERSIONS_DIR / version

    def versions(self, name: str) -> list[VersionInfo]:
        """Every installed version of ``name``, newest first."""
        found: list[VersionInfo] = []
        versions = self._model_dir(name) / VERSIONS_DIR
        if not versions.is_dir():
            return []
        for path in versions.iterdir():
            if path.name.startswith(".") or not path.is_dir():
                continue
            try:
                found.append(self._info(name, path))
            except (ManifestError, FailedPrecondition) as e:
                logger.warning("registry: ignoring %s: %s", path, e)
        return sorted(found, key=lambda v: parse_version(v.version), reverse=True)

    def info(self, name: str, version: str) -> VersionInfo:
        path = self.version_dir(name, version)
        if not path.is_dir():
            raise NotFound(f"model {echo(name)} has no installed version {echo(version)}")
        return self._info(name, path)

    def load(self, name: str, version: str) -> Manifest:
        """The verified manifest of an installed version (every ONNX hash re-checked)."""
        path = self.version_dir(name, version)
        if not path.is_dir():
            raise NotFound(f"model {echo(name)} has no installed version {echo(version)}")
        try:
            return load_manifest(path)
        except ManifestError as e:
            raise FailedPrecondition(f"registry: {name} {version} is damaged: {e}") from None

    # --------------------------------------------------------------- internals

    def _model_dir(self, name: str) -> Path:
        try:
            check_family(name)
        except InvalidArgument:
            raise InvalidArgument(f"model_name: {echo(name)} is not a valid model name") from None
        return self.root / name

    def _info(self, name: str, path: Path) -> VersionInfo:
        manifest = load_manifest(path, verify_sha256=False)
        try:
            provenance = json.loads((path / PROVENANCE_FILE).read_text())
            source = provenance["source"]
            staged_at = str(provenance["staged_at"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise FailedPrecondition(f"{path}: provenance missing or invalid ({e})") from None
        if source not in SOURCES:
            raise FailedPrecondition(f"{path}: unknown source {source!r}")
        return VersionInfo(name, manifest.version, manifest.sha256, source, staged_at, path)
