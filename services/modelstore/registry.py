"""The model registry on disk: verified versions and the slots that say which one serves.

Layout (``<root>`` is the ``models`` volume: the update service writes it, inference
reads it)::

    <root>/<model>/
      versions/<version>/     a complete, verified model directory: manifest.json, every
                              ONNX file it references (sha256-checked), the model card,
                              provenance.json (source: shipped | tuf | local, staged_at)
      state.json              the slots: active, candidate, previous, the rollout stage
                              (none | staged | shadow | ab) with its share and start,
                              and a generation counter
      .lock                   writers serialize on it (flock)

**Crash safety.** A version directory is written under a temporary name, every file
fsynced, then renamed into ``versions/`` (and the directory fsynced), so a version is
either absent or complete. ``state.json`` is replaced atomically (write, fsync, rename,
fsync the directory) and only ever names complete versions. A process killed at any
instant therefore leaves either the old slots or the new ones, each pointing at a
model that loads; ``tests/unit/modelstore/test_registry.py`` kills writers mid-activation
to show it. Readers (inference) just read ``state.json`` and the directories it names.
What a killed writer leaves (temporary directories and files, the update service's
``.stage-*``/``.local-*`` staging) is removed by :meth:`Registry.sweep` at start.

Every slot change goes through :meth:`Registry.transition`, which checks the rules
(e.g. only a staged candidate can enter shadow) and bumps ``generation``, so readers
can tell that something changed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from models.manifest import MANIFEST_FILE, ManifestError, load_manifest
from services.kit.errors import FailedPrecondition, InvalidArgument
from services.kit.files import fsync_dir, write_atomic
from services.modelstore.bundle import CARD_FILES, check_family, parse_version
from services.modelstore.reader import (
    PROVENANCE_FILE,
    SOURCES,
    STATE_FILE,
    RegistryReader,
    SlotState,
    Source,
    Stage,
    VersionInfo,
)

logger = logging.getLogger(__name__)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class Registry(RegistryReader):
    """The store under ``root`` with its writing half; safe for one writer process at a
    time per model (writers take a lock) and any number of readers."""

    def add_version(self, src_dir: Path, source: Source) -> VersionInfo:
        """Installs the model directory ``src_dir`` (verified first) as a new version.

        Idempotent: installing the same version with the same sha256 again returns the
        installed one; the same version with different content is FailedPrecondition.
        """
        if source not in SOURCES:
            raise InvalidArgument(f"source: {source!r} is not one of {SOURCES}")
        try:
            manifest = load_manifest(src_dir)
        except ManifestError as e:
            raise InvalidArgument(f"model directory {src_dir}: {e}") from None
        name = check_family(manifest.name)
        parse_version(manifest.version)
        target = self.version_dir(name, manifest.version)
        if target.is_dir():
            existing = self._info(name, target)
            if existing.sha256 != manifest.sha256:
                raise FailedPrecondition(
                    f"model {name} {manifest.version} is already installed with sha256"
                    f" {existing.sha256[:12]}…, not {manifest.sha256[:12]}…; versions are"
                    " immutable: publish a new version"
                )
            return existing
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(
            tempfile.mkdtemp(dir=target.parent, prefix=f".{manifest.version}.", suffix=".tmp")
        )
        try:
            files = {MANIFEST_FILE, *manifest.files()}
            files |= {card for card in CARD_FILES if (src_dir / card).is_file()}
            for file in sorted(files):
                _copy_durably(src_dir / file, tmp / file)
            provenance = {"source": source, "staged_at": now_iso()}
            write_atomic(tmp / PROVENANCE_FILE, json.dumps(provenance).encode(), durable=True)
            load_manifest(tmp)  # the copy verifies too
            fsync_dir(tmp)
            os.replace(tmp, target)
            fsync_dir(target.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        logger.info("registry: installed %s %s (%s)", name, manifest.version, source)
        return self._info(name, target)

    def transition(self, name: str, change: Callable[[SlotState], SlotState]) -> SlotState:
        """Applies ``change`` to the slots of ``name`` under the model's lock and writes the
        result atomically (generation + 1). ``change`` raises to refuse."""
        with self._locked(name):
            # Temp files left by a writer that died mid-write (we hold the lock now).
            for stale in self._model_dir(name).glob(f".{STATE_FILE}.*.tmp"):
                stale.unlink(missing_ok=True)
            before = self.state(name)
            after = change(before)
            if after == before:
                return before
            after = replace(after, generation=before.generation + 1)
            after.check(f"{name} state")
            for version in {after.active, after.candidate, after.previous} - {None}:
                assert version is not None
                if not self.version_dir(name, version).is_dir():
                    raise FailedPrecondition(f"model {name} {version} is not installed")
            write_atomic(self._model_dir(name) / STATE_FILE, after.to_json(), durable=True)
            logger.info(
                "registry: %s active=%s candidate=%s (%s) previous=%s",
                name,
                after.active,
                after.candidate,
                after.stage,
                after.previous,
            )
            return after

    # The lifecycle, each one transition.

    def activate(self, name: str, version: str) -> SlotState:
        """Makes ``version`` active directly (bootstrap and restore only; updates go
        through stage -> shadow/ab -> promote)."""

        def change(s: SlotState) -> SlotState:
            if s.active == version:
                return s
            previous = s.active if s.active is not None else s.previous
            candidate, stage = (None, "none") if s.candidate == version else (s.candidate, s.stage)
            return replace(
                s,
                active=version,
                previous=previous,
                candidate=candidate,
                stage=stage,
                share=s.share if candidate else 0.0,
            )

        self.info(name, version)
        return self.transition(name, change)

    def stage(self, name: str, version: str) -> SlotState:
        """Makes an installed version the candidate; it must be newer than active."""
        self.info(name, version)

        def change(s: SlotState) -> SlotState:
            if s.active == version:
                raise FailedPrecondition(f"model {name} {version} is already active")
            if s.candidate == version:
                return s
            if s.candidate is not None and s.stage in ("shadow", "ab"):
                raise FailedPrecondition(
                    f"model {name}: candidate {s.candidate} is in {s.stage}; promote or roll"
                    " it back before staging another"
                )
            if s.active is not None and parse_version(version) <= parse_version(s.active):
                raise FailedPrecondition(
                    f"model {name}: {version} is not newer than active {s.active}"
                    " (rollback protection)"
                )
            return replace(
                s,
                candidate=version,
                stage="staged",
                share=0.0,
                stage_started_at=now_iso(),
                # Staging a rolled-back version again is the owner's choice to retry it.
                rolled_back=None if s.rolled_back == version else s.rolled_back,
            )

        return self.transition(name, change)

    def start_rollout(self, name: str, stage: Stage, share: float = 0.0) -> SlotState:
        if stage not in ("shadow", "ab"):
            raise InvalidArgument(f"stage: must be shadow or ab, not {stage!r}")
        if stage == "ab" and not 0 < share <= 1:
            raise InvalidArgument(f"candidate_share: {share} is not in (0, 1]")

        def change(s: SlotState) -> SlotState:
            if s.candidate is None:
                raise FailedPrecondition(f"model {name} has no candidate: stage one first")
            if s.stage == stage and (stage != "ab" or s.share == share):
                return s
            return replace(
                s, stage=stage, share=share if stage == "ab" else 0.0, stage_started_at=now_iso()
            )

        return self.transition(name, change)

    def promote(self, name: str) -> SlotState:
        def change(s: SlotState) -> SlotState:
            if s.candidate is None:
                raise FailedPrecondition(f"model {name} has no candidate to promote")
            if s.stage not in ("shadow", "ab"):
                raise FailedPrecondition(
                    f"model {name}: candidate {s.candidate} is only {s.stage}; it must run in"
                    " shadow or A/B before it can be promoted"
                )
            return SlotState(
                active=s.candidate,
                previous=s.active,
                stage="none",
                stage_started_at=now_iso(),
                generation=s.generation,
                rolled_back=s.rolled_back,
            )

        return self.transition(name, change)

    def rollback(self, name: str) -> SlotState:
        """Drops a candidate in rollout; without one, restores the previous version."""

        def change(s: SlotState) -> SlotState:
            if s.candidate is not None:
                return replace(
                    s,
                    candidate=None,
                    stage="none",
                    share=0.0,
                    stage_started_at=now_iso(),
                    rolled_back=s.candidate,
                )
            if s.previous is None:
                raise FailedPrecondition(f"model {name} has no previous version to roll back to")
            return replace(
                s,
                active=s.previous,
                previous=None,
                stage_started_at=now_iso(),
                rolled_back=s.active,
            )

        return self.transition(name, change)

    def restore(self, name: str, before: SlotState) -> SlotState:
        """Puts the slots back as they were in ``before`` (a step that must not stand,
        e.g. a promotion the audit log did not record); generation still moves on."""
        return self.transition(name, lambda s: replace(before, generation=s.generation))

    def sweep(self) -> tuple[int, int]:
        """Removes what writers killed mid-write left behind (staging directories of
        the update service, ``versions/.*.tmp``, ``.state.json.*.tmp``): (entries, bytes).
        Call at start, before this process writes (the update service is the one writer)."""
        leftovers = [*self.root.glob(".stage-*"), *self.root.glob(".local-*")]
        for model_dir in self.root.glob("*/"):
            leftovers += model_dir.glob(f".{STATE_FILE}.*.tmp")
            leftovers += model_dir.glob("versions/.*.tmp")
        size = sum(_size(p) for p in leftovers)
        for p in leftovers:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        if leftovers:
            logger.info("registry: swept %d crash leftovers (%d bytes)", len(leftovers), size)
        return len(leftovers), size

    def bootstrap(self, shipped_dir: Path) -> list[str]:
        """Installs and activates every shipped model that the registry does not have
        yet (first start). Returns the names bootstrapped."""
        done: list[str] = []
        for manifest_path in sorted(shipped_dir.glob(f"*/{MANIFEST_FILE}")):
            src = manifest_path.parent
            try:
                manifest = load_manifest(src)
            except ManifestError as e:
                logger.error("registry: not bootstrapping %s: %s", src, e)
                continue
            if self.state(manifest.name).active is not None:
                continue
            self.add_version(src, "shipped")
            self.activate(manifest.name, manifest.version)
            done.append(manifest.name)
        return done

    # --------------------------------------------------------------- internals

    @contextlib.contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        model_dir = self._model_dir(name)
        model_dir.mkdir(parents=True, exist_ok=True)
        with (model_dir / ".lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _copy_durably(src: Path, dst: Path) -> None:
    with src.open("rb") as fin, dst.open("wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
        fout.flush()
        os.fsync(fout.fileno())


def _size(path: Path) -> int:
    """Bytes in the files at or below ``path``."""
    files = [path] if path.is_symlink() or not path.is_dir() else path.rglob("*")
    return sum(p.lstat().st_size for p in files if p.is_symlink() or not p.is_dir())
