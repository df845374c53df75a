"""A publisher's TUF repository and one hub, on disk, for the signed-update tests
(``cli.tuf_repo`` publishes, ``services.update.tuf_client`` refreshes and installs),
and the tools of an attacker who controls the mirror."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner  # type: ignore[attr-defined]
from tuf.api.metadata import (  # type: ignore[attr-defined]
    Metadata,
    MetaFile,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)

from cli.tuf_repo import DEFAULT_FAMILIES, ModelRepository
from models.manifest import MANIFEST_FILE, load_manifest, shipped_models_dir
from services.modelstore.bundle import TargetInfo, pack_bundle
from services.update.tuf_client import ModelUpdater, UpdateRefused

MAX_BUNDLE = 1 << 20
FAMILY = "occupancy"


def model_dir(tmp: Path, version: str) -> Path:
    """A copy of the shipped occupancy model whose manifest says ``version``."""
    dst = tmp / "src" / f"{FAMILY}-{version}"
    if not dst.exists():
        shutil.copytree(shipped_models_dir() / FAMILY, dst)
        raw = json.loads((dst / MANIFEST_FILE).read_text())
        raw["version"] = version
        (dst / MANIFEST_FILE).write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")
    return dst


def bundle_of(tmp: Path, version: str) -> Path:
    out = tmp / "bundles" / f"{FAMILY}-{version}.tar"
    if not out.exists():
        pack_bundle(model_dir(tmp, version), out)
    return out


def tree(root: Path) -> dict[str, bytes | str]:
    """Every file (bytes) and symlink (target) below ``root``."""
    out: dict[str, bytes | str] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = os.readlink(p)
        elif p.is_file():
            out[rel] = p.read_bytes()
    return out


def signer_from(path: Path) -> CryptoSigner:
    return CryptoSigner(load_pem_private_key(path.read_bytes(), None))


def install_key(path: Path, pem: bytes) -> None:
    path.write_bytes(pem)
    path.chmod(0o600)


def forge(world: World, role: str, signer: CryptoSigner | None, bundle: Path | None = None) -> int:
    """An attacker holding the online snapshot and timestamp keys publishes the next
    version of ``role`` signed by ``signer`` (unsigned if None), optionally listing
    ``bundle`` as occupancy 1.2.0. Returns the forged role version."""
    meta = world.repo_dir / "metadata"
    version = world.repo.version(role)
    md = Metadata[Targets].from_bytes((meta / f"{version}.{role}.json").read_bytes())
    md.signed.version = version + 1
    if bundle is not None:
        target = TargetFile.from_file("occupancy/occupancy-1.2.0.tar", str(bundle))
        target.unrecognized_fields["custom"] = {
            "version": "1.2.0",
            "model": FAMILY,
            "sha256_manifest": "0" * 64,
        }
        md.signed.targets[target.path] = target
        dest = world.repo_dir / "targets" / FAMILY / f"{target.hashes['sha256']}.{FAMILY}-1.2.0.tar"
        shutil.copy(bundle, dest)
    md.signatures.clear()
    if signer is not None:
        md.sign(signer)
    data = md.to_bytes()
    (meta / f"{version + 1}.{role}.json").write_bytes(data)

    snap_version = world.repo.version("snapshot")
    snap = Metadata[Snapshot].from_bytes((meta / f"{snap_version}.snapshot.json").read_bytes())
    snap.signed.version = snap_version + 1
    snap.signed.meta[f"{role}.json"] = MetaFile(
        version + 1, len(data), {"sha256": hashlib.sha256(data).hexdigest()}
    )
    snap.sign(signer_from(world.keys_dir / "snapshot.pem"))
    snap_data = snap.to_bytes()
    (meta / f"{snap_version + 1}.snapshot.json").write_bytes(snap_data)

    ts = Metadata[Timestamp].from_bytes((meta / "timestamp.json").read_bytes())
    ts.signed.version += 1
    ts.signed.snapshot_meta = MetaFile(
        snap_version + 1, len(snap_data), {"sha256": hashlib.sha256(snap_data).hexdigest()}
    )
    ts.sign(signer_from(world.keys_dir / "timestamp.pem"))
    (meta / "timestamp.json").write_bytes(ts.to_bytes())
    return version + 1


class World:
    """A publisher repository (served as a local directory) and one hub."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.repo_dir = tmp / "repo"
        self.keys_dir = tmp / "keys"
        self.repo = ModelRepository.create(self.repo_dir, self.keys_dir, DEFAULT_FAMILIES)
        self.hub = tmp / "hub"
        self.hub.mkdir()
        # What the integrator installs: root v1, outside the hub's metadata directory.
        self.trusted_root = self.hub / "trusted-root.json"
        shutil.copy(self.repo.root_path, self.trusted_root)
        self.models = self.hub / "models"

    def publish(self, version: str) -> TargetInfo:
        return self.repo.publish(FAMILY, bundle_of(self.tmp, version), version)

    def reopen(self) -> ModelRepository:
        self.repo = ModelRepository.open(self.repo_dir, self.keys_dir)
        return self.repo

    def updater(self, source: str | Path | None = None, **kw: Any) -> ModelUpdater:
        return ModelUpdater(
            self.hub / "metadata",
            self.hub / "cache",
            source if source is not None else self.repo_dir,
            trusted_root=self.trusted_root,
            max_bundle_bytes=MAX_BUNDLE,
            **kw,
        )

    def hub_state(self) -> dict[str, dict[str, bytes | str]]:
        return {"metadata": tree(self.hub / "metadata"), "models": tree(self.models)}

    def target_file(self, target: TargetInfo) -> Path:
        return self.repo_dir / "targets" / FAMILY / f"{target.sha256}.{FAMILY}-{target.version}.tar"

    def metadata(self, name: str) -> Path:
        return self.repo_dir / "metadata" / name


def installed_world(world: World) -> World:
    """``world`` once the hub trusts the repository after 1.0.0 was published and runs it."""
    world.publish("1.0.0")
    updater = world.updater()
    updater.refresh()
    target = updater.latest(FAMILY)
    assert target is not None
    updater.install(target, world.models)
    assert load_manifest(world.models / FAMILY).version == "1.0.0"
    return world


def refused(world: World, reason: str, action: Callable[[], object], match: str) -> str:
    """``action`` raises UpdateRefused(reason) matching ``match``; hub state untouched."""
    before = world.hub_state()
    with pytest.raises(UpdateRefused, match=match) as exc:
        action()
    assert exc.value.reason == reason, str(exc.value)
    assert "the running model is unchanged" in str(exc.value)
    assert world.hub_state() == before
    assert load_manifest(world.models / FAMILY).version == "1.0.0"
    return str(exc.value)


def install_latest(world: World, source: str | Path | None = None) -> Path:
    updater = world.updater(source)
    updater.refresh()
    target = updater.latest(FAMILY)
    assert target is not None
    return updater.install(target, world.models)
