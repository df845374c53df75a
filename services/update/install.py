"""Installing versions into the registry: signed releases fetched through TUF, and
local candidates signed with the hub's own key (from the personalization service).

Both are verified before they reach ``versions/`` (TUF metadata and hashes, or the
hub-key signature over the bundle, then every ONNX hash against the manifest) and are
unpacked in a temporary directory inside the registry root, so the final rename stays
on one filesystem.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from pathlib import Path
from typing import Any

from models.manifest import load_manifest
from services.kit.errors import FailedPrecondition, InvalidArgument, NotFound
from services.modelstore import local_key
from services.modelstore.bundle import TargetInfo, parse_version, unpack_bundle
from services.modelstore.reader import Source, VersionInfo
from services.modelstore.registry import Registry
from services.update.candidate_check import check_candidate
from services.update.tuf_client import ModelUpdater

logger = logging.getLogger(__name__)


class Installer:
    """Puts verified versions into ``registry``: releases from ``updater`` (None when no
    model repository is configured) and local candidates verified with
    ``local_public_key`` (None when the hub has none)."""

    def __init__(
        self,
        registry: Registry,
        updater: ModelUpdater | None,
        *,
        local_public_key: Any,
        max_bundle_bytes: int,
    ) -> None:
        self._registry = registry
        self._updater = updater
        self._local_public = local_public_key
        self._max_bundle_bytes = max_bundle_bytes

    def updater(self) -> ModelUpdater:
        """The TUF client; FailedPrecondition when no repository is configured."""
        if self._updater is None:
            raise FailedPrecondition(
                "no model repository configured (update.tuf_source and update.tuf_trusted_root)"
            )
        return self._updater

    async def available(self) -> list[TargetInfo]:
        """The newest signed release of every family that is newer than its active
        version (refreshes the repository's metadata first)."""
        updater = self.updater()
        await asyncio.to_thread(updater.refresh)
        updates: list[TargetInfo] = []
        for family in updater.families():
            latest = updater.latest(family)
            if latest is None:
                continue
            active = (await asyncio.to_thread(self._registry.state, family)).active
            if active is not None and parse_version(latest.version) <= parse_version(active):
                continue
            updates.append(latest)
        return updates

    async def release(self, name: str, version: str) -> VersionInfo:
        """``name`` ``version``: the installed one, or fetched from the signed repository."""
        parse_version(version)
        try:
            return await asyncio.to_thread(self._registry.info, name, version)
        except NotFound:
            pass
        updater = self.updater()

        def fetch() -> VersionInfo:
            updater.refresh()
            target = next((t for t in updater.targets(name) if t.version == version), None)
            if target is None:
                raise NotFound(f"model {name} {version} is not in the signed model repository")
            with tempfile.TemporaryDirectory(prefix=".stage-", dir=self._registry.root) as tmp:
                installed = updater.install(target, Path(tmp), installed_version=None)
                return self._add_checked(name, installed, "tuf")

        return await asyncio.to_thread(fetch)

    async def local(self, name: str, bundle: bytes, signature: bytes) -> VersionInfo:
        """A local candidate of ``name``: ``bundle`` signed with the hub's key."""
        if len(bundle) > self._max_bundle_bytes:
            raise InvalidArgument(f"local_bundle: larger than {self._max_bundle_bytes} bytes")
        if self._local_public is None:
            raise FailedPrecondition("no local-candidate key configured on this hub")

        def install() -> VersionInfo:
            with tempfile.TemporaryDirectory(prefix=".local-", dir=self._registry.root) as tmp:
                path = Path(tmp) / "bundle.tar"
                path.write_bytes(bundle)
                manifest = unpack_bundle(path, Path(tmp) / "model", max_bytes=len(bundle) + 1)
                if manifest.name != name:
                    raise InvalidArgument(
                        f"local_bundle: holds model {manifest.name!r}, not {name!r}"
                    )
                local_key.verify(self._local_public, name, manifest.version, bundle, signature)
                return self._add_checked(name, Path(tmp) / "model", "local")

        return await asyncio.to_thread(install)

    def _add_checked(self, name: str, model_dir: Path, source: Source) -> VersionInfo:
        """Installs a verified version only once its stage-time checks pass
        (``services.update.candidate_check``): a refused one writes nothing."""
        active = self._registry.state(name).active
        contract = (
            load_manifest(self._registry.version_dir(name, active), verify_sha256=False)
            if active is not None
            else None
        )
        report = check_candidate(model_dir, contract)
        logger.info("candidate %s checked: %s", name, report)
        return self._registry.add_version(model_dir, source)
