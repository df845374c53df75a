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

This module holds the publishing operations (:class:`ModelRepository`); the key files
are ``cli.tuf_keys`` and the metadata on disk, with its signing, ``cli.tuf_metadata``.
Hubs never import any of them: they read the repository with
``services.update.tuf_client``.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from tuf.api.metadata import (  # type: ignore[attr-defined]
    DelegatedRole,
    Delegations,
    Metadata,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)

from cli.tuf_keys import KeyStore
from cli.tuf_metadata import TOP_LEVEL_ROLES, MetadataStore, now, sha256_hex
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
from services.modelstore.card import release_notes_in

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


def _is_within(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def _check_layout(repo_dir: Path, keys_dir: Path) -> None:
    repo, keys = repo_dir.resolve(), keys_dir.resolve()
    if _is_within(keys, repo) or _is_within(repo, keys):
        raise InvalidArgument(
            f"keys directory {keys_dir} and repository {repo_dir} must not contain each other: "
            "the repository is published, private keys must never be"
        )


class ModelRepository:
    """Create, open and publish to a TUF repository of model bundles (publisher side)."""

    def __init__(self, repo_dir: Path, keys_dir: Path, store: MetadataStore) -> None:
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
        keys = KeyStore(keys_dir)
        keys.create_dir()
        if any(keys.path(r).exists() for r in (*TOP_LEVEL_ROLES, *fams)):
            raise AlreadyExists(f"{keys_dir} already holds signing keys; refusing to overwrite")
        store = MetadataStore(repo_dir, keys, policy)
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

        root = Root(expires=now(), consistent_snapshot=True)
        for role in TOP_LEVEL_ROLES:
            root.add_key(signers[role].public_key, role)
        store.sign_and_write(Root.type, Metadata[Any](root))

        for fam in fams:
            store.sign_and_write(fam, Metadata[Any](Targets(expires=now())))
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
        targets = Targets(expires=now(), delegations=delegations)
        store.sign_and_write(Targets.type, Metadata[Any](targets))
        snapshot = Snapshot(expires=now(), meta=store.targets_infos)
        store.sign_and_write(Snapshot.type, Metadata[Any](snapshot))
        timestamp = Timestamp(expires=now(), snapshot_meta=store.snapshot_info)
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
        return cls(repo_dir, keys_dir, MetadataStore(repo_dir, KeyStore(keys_dir), policy))

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
            manifest_sha = sha256_hex((Path(tmp) / "b" / MANIFEST_FILE).read_bytes())
            notes = release_notes_in(Path(tmp) / "b")
        if manifest.version != version:
            raise InvalidArgument(
                f"bundle {bundle_path.name} holds {manifest.name} version {manifest.version}, "
                f"not {version}; repack the model with the right manifest version"
            )
        data = bundle_path.read_bytes()
        sha = sha256_hex(data)
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
                    "release_notes": notes,
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
