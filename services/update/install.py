"""Preparing versions for the registry: signed releases fetched through TUF, and local
candidates signed with the hub's own key (from the personalization service).

Preparing never touches ``versions/``: a release is refreshed, downloaded and verified
(TUF metadata and hashes, then every ONNX hash against the manifest) into a
``.stage-*`` directory inside the registry root, a local candidate is unpacked and its
hub-key signature checked in a ``.local-*`` one. Only a :class:`Prepared` version the
rollout accepts is committed (:meth:`Prepared.commit`, a rename-into-place by the
registry); everything else is discarded. A version already on disk is re-verified
against fresh TUF metadata before it is offered again (an expired or tampered
repository cannot slip it back in).

No freeze: network work runs in a fetch thread of its own (a daemon: a fetch stuck on a
mirror never holds up shutdown), never the threads that answer status or rollback, and
one operation at a time: a ``CheckForUpdates`` that
finds a refresh running joins it; any other caller gets ``RESOURCE_EXHAUSTED`` (and
the running fetch ends by its own deadline, ``update.fetch_deadline_seconds``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client import Counter

from models.manifest import MANIFEST_FILE, ManifestError, load_manifest
from services.kit.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from services.modelstore import local_key
from services.modelstore.bundle import TargetInfo, parse_version, unpack_bundle
from services.modelstore.reader import Source, VersionInfo
from services.modelstore.registry import Registry
from services.update.candidate_check import check_candidate
from services.update.tuf_client import ModelUpdater, UpdateRefused

T = TypeVar("T")
logger = logging.getLogger(__name__)

BUSY = Counter(
    "roost_update_fetch_busy_total",
    "Calls refused because a fetch from the model repository was already running.",
    ["operation"],
)


@dataclass
class Prepared:
    """A verified version ready to be committed to the registry: in ``directory``
    (a staging copy), or already ``installed`` (re-verified)."""

    name: str
    version: str
    source: Source
    directory: Path | None = None
    installed: VersionInfo | None = None
    scratch: Path | None = None  # removed by discard()

    def commit(self, registry: Registry) -> VersionInfo:
        """Moves the version into ``versions/`` (or returns the installed one)."""
        if self.installed is not None:
            return self.installed
        assert self.directory is not None
        return registry.add_version(self.directory, self.source)

    def discard(self) -> None:
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


class Installer:
    """Prepares verified versions of ``registry``: releases from ``updater`` (None when
    no model repository is configured) and local candidates verified with
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
        self._running: tuple[str, asyncio.Future[Any]] | None = None

    def updater(self) -> ModelUpdater:
        """The TUF client; FailedPrecondition when no repository is configured."""
        if self._updater is None:
            raise FailedPrecondition(
                "no model repository configured (update.tuf_source and update.tuf_trusted_root)"
            )
        return self._updater

    async def available(self) -> list[TargetInfo]:
        """The newest signed release of every family that is newer than its active
        version (refreshes the repository's metadata first; joins a running check)."""
        updater = self.updater()

        def check() -> list[TargetInfo]:
            updater.refresh()
            updates: list[TargetInfo] = []
            for family in updater.families():
                latest = updater.latest(family)
                active = self._registry.state(family).active
                if latest is None or (
                    active is not None and parse_version(latest.version) <= parse_version(active)
                ):
                    continue
                updates.append(latest)
            return updates

        return await self._fetch("check", check)

    async def release(self, name: str, version: str) -> Prepared:
        """``name`` ``version`` from the signed repository, verified in staging; an
        installed copy is re-verified against the fresh metadata instead."""
        parse_version(version)
        updater = self.updater()

        def fetch() -> Prepared:
            updater.refresh()
            target = next((t for t in updater.targets(name) if t.version == version), None)
            if target is None:
                raise NotFound(f"model {name} {version} is not in the signed model repository")
            try:
                on_disk = self._registry.info(name, version)
            except NotFound:
                on_disk = None
            if on_disk is not None:
                reverified = _reverified(on_disk, target)
                self._check(name, reverified.path)
                return Prepared(name, version, "tuf", installed=reverified)
            scratch = Path(tempfile.mkdtemp(prefix=".stage-", dir=self._ensure_root()))
            try:
                installed = updater.install(target, scratch, installed_version=None)
                self._check(name, installed)
            except BaseException:
                shutil.rmtree(scratch, ignore_errors=True)
                raise
            return Prepared(name, version, "tuf", directory=installed, scratch=scratch)

        return await self._fetch("stage", fetch)

    async def local(self, name: str, bundle: bytes, signature: bytes) -> Prepared:
        """A local candidate of ``name``: ``bundle`` signed with the hub's key."""
        if len(bundle) > self._max_bundle_bytes:
            raise InvalidArgument(f"local_bundle: larger than {self._max_bundle_bytes} bytes")
        if self._local_public is None:
            raise FailedPrecondition("no local-candidate key configured on this hub")

        def unpack() -> Prepared:
            scratch = Path(tempfile.mkdtemp(prefix=".local-", dir=self._ensure_root()))
            try:
                path = scratch / "bundle.tar"
                path.write_bytes(bundle)
                manifest = unpack_bundle(path, scratch / "model", max_bytes=len(bundle) + 1)
                if manifest.name != name:
                    raise InvalidArgument(
                        f"local_bundle: holds model {manifest.name!r}, not {name!r}"
                    )
                local_key.verify(self._local_public, name, manifest.version, bundle, signature)
                self._check(name, scratch / "model")
            except BaseException:
                shutil.rmtree(scratch, ignore_errors=True)
                raise
            return Prepared(
                name, manifest.version, "local", directory=scratch / "model", scratch=scratch
            )

        return await asyncio.to_thread(unpack)

    # ------------------------------------------------------------------ internals

    def _check(self, name: str, model_dir: Path) -> None:
        """The stage-time checks (``services.update.candidate_check``) against the active
        version's contract, before anything is written: a refusal raises."""
        active = self._registry.state(name).active
        contract = (
            load_manifest(self._registry.version_dir(name, active), verify_sha256=False)
            if active is not None
            else None
        )
        report = check_candidate(model_dir, contract)
        logger.info("candidate %s checked: %s", name, report)

    def _ensure_root(self) -> Path:
        self._registry.root.mkdir(parents=True, exist_ok=True)
        return self._registry.root

    async def _fetch(self, operation: str, work: Callable[[], T]) -> T:
        """Runs ``work`` in the fetch thread, one operation at a time. A caller that
        gives up (deadline, cancellation) leaves the fetch to finish by its own limits."""
        running = self._running
        if running is not None and not running[1].done():
            if operation == "check" and running[0] == "check":
                return await asyncio.shield(running[1])
            BUSY.labels(operation).inc()
            raise ResourceExhausted(
                f"the update service is already fetching from the model repository "
                f"({running[0]}); retry when it is done"
            )
        future = _in_fetch_thread(asyncio.get_running_loop(), work)
        self._running = (operation, future)
        return await asyncio.shield(future)


def _in_fetch_thread(loop: asyncio.AbstractEventLoop, work: Callable[[], T]) -> asyncio.Future[T]:
    """``work()`` in a daemon thread of its own (a fetch stuck on a mirror never holds
    up the process's exit), its outcome in the returned future."""
    future: asyncio.Future[T] = loop.create_future()
    future.add_done_callback(_consume)

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():
            outcome()

    def run() -> None:
        outcome: Callable[[], None]
        try:
            outcome = functools.partial(future.set_result, work())
        except BaseException as e:
            outcome = functools.partial(future.set_exception, e)
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody to tell
            loop.call_soon_threadsafe(settle, outcome)

    threading.Thread(target=run, name="update-fetch", daemon=True).start()
    return future


def _consume(future: asyncio.Future[Any]) -> None:
    """Retrieves the outcome of a fetch nobody waits for any more (no asyncio warning)."""
    if not future.cancelled():
        future.exception()


def _reverified(on_disk: VersionInfo, target: TargetInfo) -> VersionInfo:
    """``on_disk`` if its files still match ``target``, the freshly verified signed entry."""
    try:
        load_manifest(on_disk.path)  # every ONNX file against the manifest's sha256
        manifest_sha = hashlib.sha256((on_disk.path / MANIFEST_FILE).read_bytes()).hexdigest()
    except (ManifestError, OSError) as e:
        raise UpdateRefused(
            "hash_mismatch",
            f"model update refused: the installed {target.family} {target.version} does not "
            f"verify ({e}); the running model is unchanged",
        ) from None
    if manifest_sha != target.sha256_manifest:
        raise UpdateRefused(
            "manifest_mismatch",
            f"model update refused: the installed {target.family} {target.version} differs "
            "from the signed release (its manifest.json sha256 does not match); the running "
            "model is unchanged",
        )
    return on_disk
