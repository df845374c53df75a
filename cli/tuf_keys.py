"""The publisher's signing keys: one Ed25519 private key per TUF role, as PEM files.

``<keys_dir>/<role>.pem`` (mode 0600) in a 0700 directory that must never be published
(see ``cli.tuf_repo`` for the layout and which key signs what). A new key is written
without overwriting an active one; a rotation writes ``<role>.pem.new`` first and
commits it once the metadata that trusts it is written.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner  # type: ignore[attr-defined]  # no __all__

from services.kit.errors import FailedPrecondition, NotFound
from services.kit.files import write_atomic


class KeyStore:
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
