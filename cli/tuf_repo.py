"""The publisher side of signed model updates: a TUF repository of model bundles.

``roost models publish`` drives this module. Two directories, never nested:

repository (public; serve it as-is over HTTP or copy it to a mirror)::

    <repo_dir>/metadata/1.root.json, 2.root.json, ...   every root version (the chain)
    <repo_dir>/metadata/root.json                        copy of the newest root
    <repo_dir>/metadata/<N>.targets.json                 top-level targets (delegations only)
    <repo_dir>/metadata/<N>.<family>.json                one delegated role per model family
    <repo_dir>/metadata/<N>.snapshot.json
    <repo_dir>/metadata/timestamp.json                   the only unversioned file clients poll
    <repo_dir>/targets/<family>/<sha256>.<family>-<version>.tar

keys (private; mode 0700, key files 0600; keep it offline / on the publisher only)::

    <keys_dir>/root.pem, targets.pem, snapshot.pem, timestamp.pem, <family>.pem
    <keys_dir>/policy.json     expiry per role (publisher settings, not needed by hubs)

Trust model (which key signs what):

* root (root key): lists the keys of root, targets, snapshot and timestamp. A new root
  is signed by the current root key; a root-key rotation is signed by both the old and
  the new root key, so hubs can follow the chain ``N.root.json`` -> ``N+1.root.json``.
* targets (targets key): lists no bundles itself; it delegates ``<family>/*`` to one
  role per model family, each with its own key (terminating delegations, so a family
  key can never sign another family's bundles, and nothing else may sign its own).
* <family> (family key): lists the family's bundles with length, sha256 and custom
  ``{"version", "model", "sha256_manifest"}``.
* snapshot (snapshot key): versions, lengths and hashes of targets + every family role
  (prevents mix-and-match of role versions).
* timestamp (timestamp key): version, length and hash of the snapshot; short expiry
  (refresh it regularly with ``refresh_timestamp``; a hub refuses an expired one).

Consistent snapshots are on: every metadata file except timestamp.json is written once
under its version and never rewritten, and target files are prefixed with their sha256,
so a mirror can be updated while hubs read it.

The family name ``local`` is reserved: hub-local candidates (personalized models trained
on the hub) will be signed by a per-hub key that the hub trusts for local candidates only;
they never come from, nor can they be published into, this repository.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import tempfile
from collections.abc import Iterable, Sequence
from copy import deepcopy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner  # type: ignore[attr-defined]  # no __all__
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import (  # type: ignore[attr-defined]
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer
from tuf.repository import Repository  # type: ignore[attr-defined]

from models.manifest import MANIFEST_FILE
from services.kit.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from services.kit.files import write_atomic
from services.modelstore.bundle import (
    TargetInfo,
    check_family,
    parse_version,
    target_path,
    unpack_bundle,
)

TOP_LEVEL_ROLES = ("root", "targets", "snapshot", "timestamp")
DEFAULT_FAMILIES = ("occupancy", "comfort", "anomaly", "routine")
RESERVED_FAMILIES = frozenset({"local"})
# "delegated" is the default for every family role without its own entry.
DEFAULT_EXPIRY: dict[str, timedelta] = {
    "root": timedelta(days=365),
    "targets": timedelta(days=90),
    "snapshot": timedelta(days=7),
    "timestamp": timedelta(days=1),
    "delegated": timedelta(days=90),
}
POLICY_FILE = "policy.json"
MAX_PUBLISH_BYTES = 512 * 1024 * 1024
_VERSIONED_RE = re.compile(r"^([1-9]\d*)\.([a-z][a-z0-9_]*)\.json$")
_SERIALIZER = JSONSerializer(compact=False)


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _is_within(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def _check_layout(repo_dir: Path, keys_dir: Path) -> None:
    repo, keys = repo_dir.resolve(), keys_dir.resolve()
    if _is_within(keys, repo) or _is_within(repo, keys):
        raise InvalidArgument(
            f"keys directory {keys_dir} and repository {repo_dir} must not contain each other: "
            "the repository is published, private keys must never be"
        )


class _KeyStore:
    """Ed25519 private keys as PEM files (0600) in a 0700 directory, one per role."""

    def __init__(self, keys_dir: Path) -> None:
        self.dir = keys_dir

    def path(self, role: str) -> Path:
        return self.dir / f"{role}.pem"

    def create_dir(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.dir, 0o700)

    def generate(self, role: str, *, pending: bool = False) -> CryptoSigner:
        """A new key for ``role``, written to ``<role>.pem`` (or ``<role>.pem.new`` until
        ``commit`` when ``pending``); never overwrites an active key."""
        signer = CryptoSigner.generate_ed25519()
        path = self.path(role)
        if pending:
            write_atomic(path.with_name(path.name + ".new"), signer.private_bytes, mode=0o600)
            return signer
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(signer.private_bytes)
        return signer

    def commit(self, role: str) -> None:
        path = self.path(role)
        os.replace(path.with_name(path.name + ".new"), path)

    def load(self, role: str) -> CryptoSigner:
        path = self.path(role)
        try:
            mode = path.stat().st_mode
        except FileNotFoundError as e:
            raise NotFound(f"signing key for role '{role}' not found at {path}") from e
        if stat.S_IMODE(mode) & 0o077:
            raise FailedPrecondition(
                f"signing key {path} is readable by group/others; run: chmod 600 {path}"
            )
        try:
            private = load_pem_private_key(path.read_bytes(), None)
            return CryptoSigner(private)
        except (ValueError, TypeError) as e:
            raise FailedPrecondition(f"signing key {path} is not a PEM private key: {e}") from e


class _Store(Repository):
    """``tuf.repository.Repository`` over the on-disk layout described in the module."""

    def __init__(self, repo_dir: Path, keys: _KeyStore, expiry: dict[str, timedelta]) -> None:
        self.metadata_dir = repo_dir / "metadata"
        self.targets_dir = repo_dir / "targets"
        self.keys = keys
        self.expiry = expiry
        self._cache: dict[str, tuple[Metadata[Any], bytes]] = {}
        self._signers: dict[str, CryptoSigner] = {}

    # -- storage ---------------------------------------------------------------------------

    def _latest_file(self, role: str) -> Path | None:
        if role == Timestamp.type:
            path = self.metadata_dir / "timestamp.json"
            return path if path.is_file() else None
        best: tuple[int, Path] | None = None
        for p in self.metadata_dir.iterdir():
            m = _VERSIONED_RE.fullmatch(p.name)
            if m and m.group(2) == role and (best is None or int(m.group(1)) > best[0]):
                best = (int(m.group(1)), p)
        return best[1] if best else None

    def _load(self, role: str) -> tuple[Metadata[Any], bytes]:
        if role not in self._cache:
            path = self._latest_file(role)
            if path is None:
                raise NotFound(f"no metadata for role '{role}' in {self.metadata_dir}")
            data = path.read_bytes()
            self._cache[role] = (Metadata[Any].from_bytes(data), data)
        return self._cache[role]

    def forget(self) -> None:
        """Drop cached metadata: re-read the newest files on next use."""
        self._cache.clear()

    def write(self, role: str, md: Metadata[Any]) -> None:
        data = md.to_bytes(_SERIALIZER)
        if role == Timestamp.type:
            write_atomic(self.metadata_dir / "timestamp.json", data)
        else:
            versioned = self.metadata_dir / f"{md.signed.version}.{role}.json"
            if versioned.exists():
                raise AlreadyExists(
                    f"{versioned} already exists: published metadata is never rewritten"
                )
            write_atomic(versioned, data)
            if role == Root.type:
                write_atomic(self.metadata_dir / "root.json", data)
        self._cache[role] = (deepcopy(md), data)

    # -- signing ---------------------------------------------------------------------------

    def signer(self, role: str) -> CryptoSigner:
        """The role's key from the key store, checked against the key the repository
        trusts for the role (so a wrong key file fails here, not on every hub)."""
        if role not in self._signers:
            signer = self.keys.load(role)
            trusted = self.trusted_keyids(role)
            if signer.public_key.keyid not in trusted:
                raise FailedPrecondition(
                    f"signing key {self.keys.path(role)} (keyid {signer.public_key.keyid[:16]}) "
                    f"is not a key the repository trusts for '{role}'; restore the right key "
                    "file or rotate the role's key"
                )
            self._signers[role] = signer
        return self._signers[role]

    def trusted_keyids(self, role: str) -> list[str]:
        if role in TOP_LEVEL_ROLES:
            return list(self.root().roles[role].keyids)
        delegations = self.targets().delegations
        if delegations is None or delegations.roles is None or role not in delegations.roles:
            raise NotFound(f"role '{role}' is not delegated by targets")
        return list(delegations.roles[role].keyids)

    def verify(self, role: str) -> None:
        """The newest ``role`` metadata on disk is signed as its delegator requires."""
        md = self._load(role)[0]
        delegator: Root | Targets = self.root() if role in TOP_LEVEL_ROLES else self.targets()
        try:
            delegator.verify_delegate(role, md.signed_bytes, md.signatures)
        except UnsignedMetadataError as e:
            raise FailedPrecondition(
                f"metadata/{md.signed.version}.{role}.json is not signed by the key(s) "
                f"trusted for '{role}' ({e}); refusing to snapshot it"
            ) from e

    def set_signer(self, role: str, signer: CryptoSigner) -> None:
        self._signers[role] = signer

    def expiry_for(self, role: str) -> timedelta:
        if role in self.expiry:
            return self.expiry[role]
        return self.expiry["delegated"]

    def sign_and_write(
        self,
        role: str,
        md: Metadata[Any],
        signers: Iterable[CryptoSigner] | None = None,
        *,
        expires: datetime | None = None,
    ) -> None:
        md.signed.expires = expires if expires is not None else _now() + self.expiry_for(role)
        md.signatures.clear()
        for s in signers if signers is not None else [self.signer(role)]:
            md.sign(s, append=True)
        self.write(role, md)

    # -- tuf.repository.Repository ----------------------------------------------------------

    def open(self, role: str) -> Metadata[Any]:
        return deepcopy(self._load(role)[0])

    def close(self, role: str, md: Metadata[Any]) -> None:
        md.signed.version += 1
        self.sign_and_write(role, md)

    def _meta_file(self, role: str) -> MetaFile:
        md, data = self._load(role)
        return MetaFile(md.signed.version, len(data), {"sha256": _sha256(data)})

    @property
    def targets_infos(self) -> dict[str, MetaFile]:
        roles = [Targets.type, *self.delegated_roles()]
        return {f"{r}.json": self._meta_file(r) for r in roles}

    @property
    def snapshot_info(self) -> MetaFile:
        return self._meta_file(Snapshot.type)

    def delegated_roles(self) -> list[str]:
        delegations = self.targets().delegations
        if delegations is None or delegations.roles is None:
            return []
        return list(delegations.roles)


class ModelRepository:
    """Create, open and publish to a TUF repository of model bundles (publisher side)."""

    def __init__(self, repo_dir: Path, keys_dir: Path, store: _Store) -> None:
        self.repo_dir = repo_dir
        self.keys_dir = keys_dir
        self._store = store

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        repo_dir: Path,
        keys_dir: Path,
        families: Sequence[str] = DEFAULT_FAMILIES,
        *,
        expiry: dict[str, timedelta] | None = None,
    ) -> ModelRepository:
        """A new repository: one key per top-level role and per family, version 1 of
        every role, an empty family role per family. ``expiry`` overrides
        ``DEFAULT_EXPIRY`` per role name (``"delegated"`` for all family roles)."""
        _check_layout(repo_dir, keys_dir)
        fams = [check_family(f) for f in families]
        if not fams or len(set(fams)) != len(fams):
            raise InvalidArgument(f"families must be non-empty and distinct, got {fams}")
        for f in fams:
            if f in RESERVED_FAMILIES or f in TOP_LEVEL_ROLES:
                raise InvalidArgument(f"model family '{f}' is a reserved name")
        policy = dict(DEFAULT_EXPIRY)
        for role, delta in (expiry or {}).items():
            if delta <= timedelta(0):
                raise InvalidArgument(f"expiry of '{role}' must be positive, got {delta}")
            policy[role] = delta
        if (repo_dir / "metadata").exists() and any((repo_dir / "metadata").iterdir()):
            raise AlreadyExists(f"{repo_dir} already holds a repository; use open()")
        keys = _KeyStore(keys_dir)
        keys.create_dir()
        if any(keys.path(r).exists() for r in (*TOP_LEVEL_ROLES, *fams)):
            raise AlreadyExists(f"{keys_dir} already holds signing keys; refusing to overwrite")
        store = _Store(repo_dir, keys, policy)
        store.metadata_dir.mkdir(parents=True, exist_ok=True)
        store.targets_dir.mkdir(parents=True, exist_ok=True)
        signers = {r: keys.generate(r) for r in (*TOP_LEVEL_ROLES, *fams)}
        for role, signer in signers.items():
            store.set_signer(role, signer)
        write_atomic(
            keys_dir / POLICY_FILE,
            (
                json.dumps({k: v.total_seconds() for k, v in policy.items()}, indent=2) + "\n"
            ).encode(),
            mode=0o600,
        )

        root = Root(expires=_now(), consistent_snapshot=True)
        for role in TOP_LEVEL_ROLES:
            root.add_key(signers[role].public_key, role)
        store.sign_and_write(Root.type, Metadata[Any](root))

        for fam in fams:
            store.sign_and_write(fam, Metadata[Any](Targets(expires=_now())))
        delegations = Delegations(
            keys={signers[f].public_key.keyid: signers[f].public_key for f in fams},
            roles={
                f: DelegatedRole(
                    name=f,
                    keyids=[signers[f].public_key.keyid],
                    threshold=1,
                    terminating=True,
                    paths=[f"{f}/*"],
                )
                for f in fams
            },
        )
        targets = Targets(expires=_now(), delegations=delegations)
        store.sign_and_write(Targets.type, Metadata[Any](targets))
        snapshot = Snapshot(expires=_now(), meta=store.targets_infos)
        store.sign_and_write(Snapshot.type, Metadata[Any](snapshot))
        timestamp = Timestamp(expires=_now(), snapshot_meta=store.snapshot_info)
        store.sign_and_write(Timestamp.type, Metadata[Any](timestamp))
        return cls(repo_dir, keys_dir, store)

    @classmethod
    def open(cls, repo_dir: Path, keys_dir: Path) -> ModelRepository:
        """An existing repository; keys are loaded (and checked) when first needed."""
        _check_layout(repo_dir, keys_dir)
        if not (repo_dir / "metadata" / "timestamp.json").is_file():
            raise NotFound(f"{repo_dir} holds no model repository; create one first")
        policy = dict(DEFAULT_EXPIRY)
        policy_path = keys_dir / POLICY_FILE
        if policy_path.is_file():
            raw = json.loads(policy_path.read_text())
            policy |= {str(k): timedelta(seconds=float(v)) for k, v in raw.items()}
        return cls(repo_dir, keys_dir, _Store(repo_dir, _KeyStore(keys_dir), policy))

    # -- queries -----------------------------------------------------------------------------

    @property
    def families(self) -> list[str]:
        return self._store.delegated_roles()

    @property
    def root_path(self) -> Path:
        """The newest root.json: what an integrator installs on a hub as its trust anchor."""
        return self._store.metadata_dir / "root.json"

    def version(self, role: str) -> int:
        return int(self._store.open(role).signed.version)

    def keyids(self, role: str) -> list[str]:
        """Key ids currently trusted for ``role`` (by root, or by targets for a family)."""
        return self._store.trusted_keyids(role)

    def targets(self, family: str) -> list[TargetInfo]:
        self._require_family(family)
        return sorted(
            (
                TargetInfo.from_tuf(family, tf)
                for tf in self._store.targets(family).targets.values()
            ),
            key=lambda t: parse_version(t.version),
        )

    # -- publishing --------------------------------------------------------------------------

    def publish(self, family: str, bundle_path: Path, version: str) -> TargetInfo:
        """Add ``bundle_path`` as ``<family>/<family>-<version>.tar``; bump the family
        role, snapshot and timestamp. The bundle is unpacked and verified first and its
        manifest version must equal ``version``; versions must increase per family."""
        self._require_family(family)
        path = target_path(family, version)
        existing = self.targets(family)
        if any(t.path == path for t in existing):
            raise AlreadyExists(f"{path} is already published; bump the version")
        if existing and parse_version(existing[-1].version) >= parse_version(version):
            raise FailedPrecondition(
                f"{family} {version} is not newer than the published {existing[-1].version}; "
                "hubs only install newer versions"
            )
        with tempfile.TemporaryDirectory(prefix="roost-publish-") as tmp:
            manifest = unpack_bundle(bundle_path, Path(tmp) / "b", max_bytes=MAX_PUBLISH_BYTES)
            manifest_sha = _sha256((Path(tmp) / "b" / MANIFEST_FILE).read_bytes())
        if manifest.version != version:
            raise InvalidArgument(
                f"bundle {bundle_path.name} holds {manifest.name} version {manifest.version}, "
                f"not {version}; repack the model with the right manifest version"
            )
        data = bundle_path.read_bytes()
        sha = _sha256(data)
        dest = self._store.targets_dir / family / f"{sha}.{family}-{version}.tar"
        dest.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(dest, data)
        target = TargetFile(
            length=len(data),
            hashes={"sha256": sha},
            path=path,
            unrecognized_fields={
                "custom": {
                    "version": version,
                    "model": manifest.name,
                    "sha256_manifest": manifest_sha,
                }
            },
        )
        with self._store.edit_targets(family) as role:
            role.targets[path] = target
        self._snapshot_and_timestamp()
        return TargetInfo.from_tuf(family, target)

    def update_snapshot(self) -> int:
        """New snapshot and timestamp covering the newest targets metadata on disk (after
        an offline signer dropped a new ``<N>.<family>.json`` into ``metadata/``)."""
        self._store.forget()
        for role in (Targets.type, *self.families):
            self._store.verify(role)
        self._snapshot_and_timestamp()
        return self.version(Snapshot.type)

    def refresh_timestamp(self, *, expires: datetime | None = None) -> int:
        """Re-sign the timestamp with a fresh expiry (run it well within its lifetime);
        returns the new version. ``expires`` overrides the policy (tests, drills)."""
        return self.renew(Timestamp.type, expires=expires)

    def renew(self, role: str, *, expires: datetime | None = None) -> int:
        """New version of ``role`` with a fresh expiry (or ``expires``), then snapshot and
        timestamp as needed so hubs see it; returns the role's new version."""
        if role == Root.type:
            md = self._store.open(Root.type)
            md.signed.version += 1
            self._store.sign_and_write(Root.type, md, expires=expires)
            return int(md.signed.version)
        if role not in (Timestamp.type, Snapshot.type, Targets.type):
            self._require_family(role)
        md = self._store.open(role)
        md.signed.version += 1
        self._store.sign_and_write(role, md, expires=expires)
        if role == Snapshot.type:
            self._store.do_timestamp()
        elif role != Timestamp.type:
            self._snapshot_and_timestamp()
        return int(md.signed.version)

    def rotate_key(self, role: str) -> str:
        """Replace ``role``'s key with a fresh one; returns the new key id.

        * root: root N+1 lists the new root key and is signed by the old and the new one.
        * targets/snapshot/timestamp: root N+1 (signed by the root key) lists the new
          key; the role is then re-signed with it (plus snapshot/timestamp as needed).
        * a family: targets lists the new key for the family; the family role is re-signed.

        The old private key file is replaced; metadata signed by it stops verifying.
        """
        keys = self._store.keys
        new = keys.generate(role, pending=True)
        if role in TOP_LEVEL_ROLES:
            root_md = self._store.open(Root.type)
            root = root_md.signed
            assert isinstance(root, Root)
            old_root_signer = self._store.signer(Root.type)
            for keyid in list(root.roles[role].keyids):
                root.revoke_key(keyid, role)
            root.add_key(new.public_key, role)
            root.version += 1
            signers = [old_root_signer, new] if role == Root.type else [old_root_signer]
            self._store.sign_and_write(Root.type, root_md, signers)
            keys.commit(role)
            self._store.set_signer(role, new)
            if role != Root.type:
                self.renew(role)
        else:
            self._require_family(role)
            with self._store.edit_targets(Targets.type) as targets:
                assert targets.delegations is not None
                assert targets.delegations.roles is not None
                for keyid in list(targets.delegations.roles[role].keyids):
                    targets.revoke_key(keyid, role)
                targets.add_key(new.public_key, role)
            keys.commit(role)
            self._store.set_signer(role, new)
            self.renew(role)
        return new.public_key.keyid

    # -- internals ---------------------------------------------------------------------------

    def _require_family(self, family: str) -> None:
        if family not in self.families:
            raise NotFound(
                f"model family '{family}' is not delegated in {self.repo_dir}; "
                f"known families: {', '.join(self.families) or 'none'}"
            )

    def _snapshot_and_timestamp(self) -> None:
        self._store.do_snapshot()
        self._store.do_timestamp()
