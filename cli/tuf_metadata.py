"""The publisher's TUF metadata on disk: reading, signing and writing every role.

``MetadataStore`` implements ``tuf.repository.Repository`` over ``<repo_dir>/metadata``
(consistent snapshots: every file but ``timestamp.json`` is written once under its
version and never rewritten; ``root.json`` is a copy of the newest root) and signs
with the keys of a :class:`~cli.tuf_keys.KeyStore`, each checked against the key the
repository trusts for its role. ``cli.tuf_repo`` builds the publishing operations on it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from copy import deepcopy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from securesystemslib.signer import CryptoSigner  # type: ignore[attr-defined]  # no __all__
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import (  # type: ignore[attr-defined]
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer
from tuf.repository import Repository  # type: ignore[attr-defined]

from cli.tuf_keys import KeyStore
from services.kit.errors import AlreadyExists, FailedPrecondition, NotFound
from services.kit.files import write_atomic

TOP_LEVEL_ROLES = ("root", "targets", "snapshot", "timestamp")
_VERSIONED_RE = re.compile(r"^([1-9]\d*)\.([a-z][a-z0-9_]*)\.json$")
_SERIALIZER = JSONSerializer(compact=False)


def now() -> datetime:
    """The current time to the second (expiry dates are counted from it)."""
    return datetime.now(UTC).replace(microsecond=0)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class MetadataStore(Repository):
    """``tuf.repository.Repository`` over the on-disk layout described in the module."""

    def __init__(self, repo_dir: Path, keys: KeyStore, expiry: dict[str, timedelta]) -> None:
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
        md.signed.expires = expires if expires is not None else now() + self.expiry_for(role)
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
        return MetaFile(md.signed.version, len(data), {"sha256": sha256_hex(data)})

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
