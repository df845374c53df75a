"""The hub side of signed model updates: a TUF client for model bundles.

``ModelUpdater`` wraps ``tuf.ngclient.Updater``. The hub trusts exactly one thing up
front: the repository's root.json that the integrator installs at an explicit path
(``trusted_root``, e.g. shipped read-only in the hub image). Every refresh starts from
that root and walks the root chain (cached ``root_history/N.root.json`` first, then
``N+1.root.json`` from the source), so root-key rotations are followed and a forged root
is refused. From the final root on, everything is verified as TUF specifies:
timestamp (timestamp key, not expired, no version rollback) -> snapshot (snapshot key,
hash/length/version from timestamp) -> targets (targets key) -> one delegated role per
model family (family key; ``<family>/*`` only) -> bundle (length + sha256 from the
family role) -> ``unpack_bundle`` (every ONNX file against the manifest) -> the manifest
against the signed custom metadata (``version``, ``model``, ``sha256_manifest``).

Local layout::

    <metadata_dir>/root_history/N.root.json, root.json -> root_history/N.root.json
    <metadata_dir>/timestamp.json, snapshot.json, targets.json, <family>.json
    <cache_dir>/bundles/<family>-<version>.tar        verified bundles
    <models_dir>/<family>/                            installed bundle (``install``)

Transactions: a refresh runs in a staging copy of ``metadata_dir`` and only replaces the
trusted files when every role (top-level and all families) verified; ``download`` writes
a temporary file and renames it only after TUF verified length and hashes; ``install``
unpacks into a staging directory and swaps it in only after all checks. Whatever is
refused, the previously trusted metadata and the installed model stay as they were.

Sources: ``source`` is an ``http(s)://`` URL of the repository root (``metadata/`` and
``targets/`` below it) or a local directory (USB stick, NFS mirror); every fetch is held
to ``FetchLimits`` (overall deadline, minimum rate, ``max_metadata_bytes`` whatever
length is declared) by :mod:`services.update.fetchers`.

Refusals are ``UpdateRefused`` (a ``FailedPrecondition``) with a ``reason`` and a message
naming the file, the check and the likely attack; transport problems and a mirror too
slow for the limits are ``Unavailable``.

Extension point (not built yet): hub-local candidates, i.e. models personalized on the
hub, will be signed by a per-hub key that is trusted for local candidates only. They
will get their own verifier beside this class (family name ``local`` is reserved in the
publisher repository), never a delegation in the publisher's TUF repository and never a
key this class trusts; ``install`` is the single place both paths will share.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import unquote

from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Signed, TargetFile, Targets  # type: ignore[attr-defined]
from tuf.ngclient.config import UpdaterConfig
from tuf.ngclient.fetcher import FetcherInterface
from tuf.ngclient.updater import Updater

from models.manifest import MANIFEST_FILE
from services.kit.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from services.modelstore.bundle import TargetInfo, check_family, parse_version, unpack_bundle
from services.update.fetchers import FetchLimits, GuardedFetcher, resolve_source

logger = logging.getLogger(__name__)

_CHUNK = 1 << 16
_EXPIRED_ROLE_RE = re.compile(r"(?:Final |New )?([\w.-]+?)(?:\.json)? is expired")
_UNCHANGED = "the running model is unchanged"


class UpdateRefused(FailedPrecondition):
    """A model update failed a security check; nothing was installed or trusted.

    ``reason`` is one of: ``expired``, ``rollback``, ``signature``, ``hash_mismatch``,
    ``too_large``, ``invalid_metadata``, ``not_newer``, ``manifest_mismatch``.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def check_newer(family: str, version: str, installed_version: str | None) -> None:
    """Application-level rollback protection: refuse ``version`` unless it is strictly
    newer (numerically: "1.10.0" > "1.9.0") than ``installed_version``.

    TUF guarantees the metadata is fresh and validly signed; it does not stop a validly
    signed *older* bundle from being installed over a newer model. This does."""
    new = parse_version(version)
    if installed_version is None:
        return
    if new <= parse_version(installed_version):
        raise UpdateRefused(
            "not_newer",
            f"model update refused: {family} {version} is not newer than the installed "
            f"{installed_version} (version rollback); {_UNCHANGED}",
        )


class ModelUpdater:
    """Refresh, list, download and install model bundles verified by TUF."""

    def __init__(
        self,
        metadata_dir: Path,
        cache_dir: Path,
        source: str | Path,
        *,
        trusted_root: Path,
        max_bundle_bytes: int,
        max_metadata_bytes: int | None = None,
        limits: FetchLimits | None = None,
        fetcher: FetcherInterface | None = None,
    ) -> None:
        if max_bundle_bytes <= 0:
            raise InvalidArgument(f"max_bundle_bytes must be positive, got {max_bundle_bytes}")
        self.metadata_dir = metadata_dir
        self.cache_dir = cache_dir
        self.max_bundle_bytes = max_bundle_bytes
        if trusted_root.resolve() == (metadata_dir / "root.json").resolve():
            raise InvalidArgument(
                f"trusted_root {trusted_root} must live outside metadata_dir: the updater "
                "rewrites metadata_dir/root.json; install the root e.g. read-only in the image"
            )
        try:
            self._bootstrap = trusted_root.read_bytes()
        except FileNotFoundError as e:
            raise NotFound(
                f"trusted root {trusted_root} not found; install the repository's root.json "
                "(from `roost models publish`) there before updating models"
            ) from e
        self._trusted_root = trusted_root
        limits = limits or FetchLimits()
        if max_metadata_bytes is not None:
            limits = replace(limits, max_metadata_bytes=max_metadata_bytes)
        self.limits = limits
        # ngclient's caps hold where the signed metadata declares no length; the guard
        # holds every metadata file to max_metadata_bytes whatever is declared.
        self._config = UpdaterConfig()
        c, cap = self._config, limits.max_metadata_bytes
        c.root_max_length = min(c.root_max_length, cap)
        c.timestamp_max_length = min(c.timestamp_max_length, cap)
        c.snapshot_max_length = min(c.snapshot_max_length, cap)
        c.targets_max_length = min(c.targets_max_length, cap)
        self._meta_url, self._targets_url, default_fetcher = resolve_source(source, limits)
        self._fetcher = GuardedFetcher(
            fetcher if fetcher is not None else default_fetcher, self._meta_url, limits
        )
        self._updater: Updater | None = None
        self._listing: dict[str, list[tuple[TargetInfo, TargetFile]]] = {}

    # -- metadata ----------------------------------------------------------------------------

    def refresh(self) -> None:
        """Fetch and verify all metadata (root chain, timestamp, snapshot, targets and
        every family role); commit it to ``metadata_dir`` only if all of it verified."""
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(
            tempfile.mkdtemp(dir=self.metadata_dir.parent, prefix=f".{self.metadata_dir.name}.")
        )
        updater: Updater | None = None
        try:
            shutil.copytree(self.metadata_dir, staging, symlinks=True, dirs_exist_ok=True)
            with self._refusals(lambda: updater), self._fetcher.operation():
                updater = Updater(
                    str(staging),
                    self._meta_url,
                    str(self.cache_dir / "bundles"),
                    self._targets_url,
                    fetcher=self._fetcher,
                    config=self._config,
                    bootstrap=self._bootstrap,
                )
                updater.refresh()
                listing = self._load_families(updater)
            self._commit(staging)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        assert updater is not None
        self._updater, self._listing = updater, listing

    def families(self) -> list[str]:
        """Model families the verified top-level targets delegates to."""
        self._require_refreshed()
        return sorted(self._listing)

    def targets(self, family: str) -> list[TargetInfo]:
        """The family's verified bundles, oldest first."""
        self._require_refreshed()
        check_family(family)
        return [info for info, _ in self._listing.get(family, [])]

    def latest(self, family: str) -> TargetInfo | None:
        """The highest version among the family's verified bundles (None if none)."""
        targets = self.targets(family)
        return targets[-1] if targets else None

    # -- bundles -----------------------------------------------------------------------------

    def download(self, target: TargetInfo) -> Path:
        """The verified bundle (length + sha256 from the signed family role) in the cache."""
        updater = self._require_refreshed()
        listed = self._listing.get(target.family, [])
        entry = next((tf for info, tf in listed if info == target), None)
        if entry is None:
            raise NotFound(
                f"{target.path} is not in the verified {target.family} metadata; call "
                "refresh() and pick a target from latest()/targets()"
            )
        if entry.length > self.max_bundle_bytes:
            raise UpdateRefused(
                "too_large",
                f"model update refused: {target.path} is {entry.length} bytes, more than "
                f"max_bundle_bytes={self.max_bundle_bytes}; {_UNCHANGED}",
            )
        bundles = self.cache_dir / "bundles"
        bundles.mkdir(parents=True, exist_ok=True)
        dest = bundles / f"{target.family}-{target.version}.tar"
        if updater.find_cached_target(entry, str(dest)) is not None:
            return dest
        fd, tmp_name = tempfile.mkstemp(dir=bundles, prefix=f".{dest.name}.", suffix=".part")
        os.close(fd)
        try:
            with self._refusals(lambda: updater), self._fetcher.operation():
                updater.download_target(entry, filepath=tmp_name)
            os.replace(tmp_name, dest)
        finally:
            Path(tmp_name).unlink(missing_ok=True)
        return dest

    def install(
        self, target: TargetInfo, models_dir: Path, *, installed_version: str | None = None
    ) -> Path:
        """Check the version, download, unpack and swap in ``models_dir/<family>``.

        ``installed_version`` defaults to the version in the installed manifest, if any.
        Returns the installed directory; on any refusal the installed model is untouched.
        """
        final = models_dir / target.family
        if installed_version is None:
            installed_version = _installed_version(final)
        check_newer(target.family, target.version, installed_version)
        bundle = self.download(target)
        models_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=models_dir, prefix=f".{target.family}.install-"))
        old = staging.with_name(staging.name + ".old")
        try:
            manifest = unpack_bundle(bundle, staging, max_bytes=self.max_bundle_bytes)
            manifest_sha = hashlib.sha256((staging / MANIFEST_FILE).read_bytes()).hexdigest()
            problems = []
            if manifest.version != target.version:
                problems.append(f"manifest version {manifest.version} != signed {target.version}")
            if manifest.name != target.model:
                problems.append(f"manifest name {manifest.name} != signed {target.model}")
            if manifest_sha != target.sha256_manifest:
                problems.append("manifest.json sha256 differs from the signed sha256_manifest")
            if problems:
                raise UpdateRefused(
                    "manifest_mismatch",
                    f"model update refused: {target.path}: {'; '.join(problems)} "
                    f"(publisher error or tampering); {_UNCHANGED}",
                )
            os.chmod(staging, 0o755)  # noqa: S103 - models are world-readable, like the image
            if final.exists():
                os.replace(final, old)
            os.replace(staging, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)
        logger.info("installed %s %s from %s", target.family, target.version, target.path)
        return final

    def sweep(self) -> int:
        """Removes what a killed refresh or download left (metadata staging directories,
        ``.part`` bundle downloads); returns how many. Call at start, before refreshing."""
        leftovers = [
            *self.metadata_dir.parent.glob(f".{self.metadata_dir.name}.*"),
            *(self.cache_dir / "bundles").glob(".*.part"),
        ]
        for p in leftovers:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        if leftovers:
            logger.info("swept %d leftovers of interrupted fetches", len(leftovers))
        return len(leftovers)

    check_newer = staticmethod(check_newer)

    # -- internals ---------------------------------------------------------------------------

    def _require_refreshed(self) -> Updater:
        if self._updater is None:
            raise FailedPrecondition("no verified model metadata yet: call refresh() first")
        return self._updater

    def _load_families(self, updater: Updater) -> dict[str, list[tuple[TargetInfo, TargetFile]]]:
        trusted = updater._trusted_set  # ngclient has no listing API
        top = trusted.targets
        names = [] if top.delegations is None else list(top.delegations.roles or {})
        listing: dict[str, list[tuple[TargetInfo, TargetFile]]] = {}
        for family in names:
            try:
                check_family(family)
            except InvalidArgument:
                logger.warning("ignoring delegated role %r: not a model family name", family)
                continue
            # Loads (downloads, verifies, persists) the family role on the way.
            updater.get_targetinfo(f"{family}/")
            if not trusted.contains(family, Targets.type):
                logger.warning("role %r does not cover %s/*; ignoring it", family, family)
                continue
            role: Signed = trusted[family]
            assert isinstance(role, Targets)
            entries: list[tuple[TargetInfo, TargetFile]] = []
            for path, tf in role.targets.items():
                info = TargetInfo.from_tuf(family, tf)
                problems = info.problems()
                if problems:
                    logger.warning("ignoring target %s: %s", path, "; ".join(problems))
                    continue
                # The authoritative entry is what a full delegation walk returns.
                if updater.get_targetinfo(path) != tf:
                    logger.warning("ignoring target %s: shadowed by another role", path)
                    continue
                entries.append((info, tf))
            entries.sort(key=lambda e: parse_version(e[0].version))
            listing[family] = entries
        return listing

    def _commit(self, staging: Path) -> None:
        """Move verified metadata from ``staging`` into ``metadata_dir``: root chain
        first, timestamp and the root.json link last; each file replaced atomically."""
        history = staging / "root_history"
        if history.is_dir():
            (self.metadata_dir / "root_history").mkdir(exist_ok=True)
            for f in sorted(history.iterdir()):
                if f.name.endswith(".root.json"):
                    os.replace(f, self.metadata_dir / "root_history" / f.name)
        names = sorted(
            p.name
            for p in staging.iterdir()
            if p.name.endswith(".json") and p.name not in ("root.json", "timestamp.json")
        )
        for name in [*names, "timestamp.json", "root.json"]:
            src = staging / name
            if src.is_symlink() or src.is_file():
                os.replace(src, self.metadata_dir / name)

    @contextlib.contextmanager
    def _refusals(self, updater: Callable[[], Updater | None]) -> Iterator[None]:
        """Translate tuf errors into ``services.kit.errors`` with precise messages."""
        try:
            yield
        except tuf_errors.ExpiredMetadataError as e:
            role = _expired_role(str(e))
            when = _expiry_of(updater(), role)
            at = f" at {when}" if when else ""
            raise UpdateRefused(
                "expired",
                f"model update refused: {role} metadata expired{at} "
                f"(freeze attack or stale repository); {_UNCHANGED}",
            ) from e
        except tuf_errors.BadVersionNumberError as e:
            raise UpdateRefused(
                "rollback",
                f"model update refused: {self._file()} has an unexpected version "
                f"({e}): rollback or mix-and-match attack, or a repository published out of "
                f"order; {_UNCHANGED}",
            ) from e
        except tuf_errors.UnsignedMetadataError as e:
            raise UpdateRefused(
                "signature",
                f"model update refused: {self._file()} is not signed by the key(s) "
                f"trusted for that role ({e}): tampering or a compromised/retired key; "
                f"{_UNCHANGED}",
            ) from e
        except tuf_errors.LengthOrHashMismatchError as e:
            raise UpdateRefused(
                "hash_mismatch",
                f"model update refused: {self._file()} does not match the length/hash "
                f"its signed metadata declares ({e}): tampered file or mix-and-match attack; "
                f"{_UNCHANGED}",
            ) from e
        except tuf_errors.DownloadLengthMismatchError as e:
            raise UpdateRefused(
                "too_large",
                f"model update refused: {self._file()} exceeds its size limit ({e}): "
                f"endless-data attack, or the limit is configured too low; {_UNCHANGED}",
            ) from e
        except tuf_errors.DownloadHTTPError as e:
            if e.status_code in (403, 404):
                raise NotFound(
                    f"model update source has no {self._file()} (HTTP {e.status_code}); "
                    f"check the source URL/directory; {_UNCHANGED}"
                ) from e
            raise Unavailable(
                f"model update source failed on {self._file()} (HTTP {e.status_code}); "
                f"retry later; {_UNCHANGED}"
            ) from e
        except tuf_errors.SlowRetrievalError as e:
            raise Unavailable(
                f"model repository too slow while fetching {self._file()}: {e}; check the "
                f"mirror or retry later; {_UNCHANGED}"
            ) from e
        except tuf_errors.DownloadError as e:
            raise Unavailable(
                f"model update source unreachable while fetching {self._file()} "
                f"({e}); retry later; {_UNCHANGED}"
            ) from e
        except tuf_errors.RepositoryError as e:
            raise UpdateRefused(
                "invalid_metadata",
                f"model update refused: {self._file()} is invalid ({e}); {_UNCHANGED}",
            ) from e

    def _file(self) -> str:
        url = self._fetcher.last_url
        for base, label in ((self._meta_url, "metadata/"), (self._targets_url, "targets/")):
            if url.startswith(base):
                return label + unquote(url[len(base) :])
        return url or "metadata"


def _installed_version(model_dir: Path) -> str | None:
    try:
        raw = json.loads((model_dir / MANIFEST_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None
    version = raw.get("version") if isinstance(raw, dict) else None
    return version if isinstance(version, str) else None


def _expired_role(message: str) -> str:
    m = _EXPIRED_ROLE_RE.search(message)
    return m.group(1) if m else "repository"


def _expiry_of(updater: Updater | None, role: str) -> str:
    """The expiry of ``role`` as ngclient saw it (it keeps expired intermediate metadata)."""
    if updater is None:
        return ""
    signed = updater._trusted_set.get(role)  # not public in ngclient
    return signed.expires.strftime("%Y-%m-%dT%H:%M:%SZ") if signed is not None else ""
