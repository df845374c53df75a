"""Witness cosignatures of checkpoints (C2SP tlog-cosignature, Ed25519 ``cosignature/v1``).

A cosignature is a signed-note signature line added to the log's checkpoint by a
witness that checked the checkpoint extends everything it saw of that log before::

    — <witness name> base64(key ID || u64 big-endian timestamp || Ed25519 signature)

The signature covers ``cosignature/v1\\ntime <timestamp>\\n`` followed by the whole
checkpoint text (with extension lines, without the signatures). The key ID is
SHA-256(name || 0x0A || 0x04 || public key)[:4]; verifier keys are written
``<name>+<hex key ID>+base64(0x04 || public key)`` (a vkey with signature type 0x04).

A witness keeps its seed in the Roost signer-key file format
(``services.audit.checkpoint.load_or_create_signer``: safe permissions, created once);
:meth:`Cosigner.from_note_signer` turns that key into a cosigner.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from services.audit.checkpoint import CheckpointError, NoteSigner, split_note
from services.kit.encoding import b64decode_strict, b64encode

__all__ = ["ALG_COSIGNATURE_V1", "CosignatureVerifier", "Cosigner", "require_cosignatures"]

ALG_COSIGNATURE_V1 = 0x04
_HEADER = "cosignature/v1\n"
_MAX_TIMESTAMP = 2**63 - 1
_SIG_PREFIX = "\u2014 "


def cosignature_key_id(name: str, public_key: bytes) -> int:
    digest = hashlib.sha256(
        name.encode("utf-8") + b"\n" + bytes([ALG_COSIGNATURE_V1]) + public_key
    ).digest()
    return int.from_bytes(digest[:4], "big")


def signed_message(checkpoint_text: str, timestamp: int) -> bytes:
    """What a cosignature signs: header line, time line, the checkpoint text."""
    return f"{_HEADER}time {timestamp}\n{checkpoint_text}".encode()


class Cosigner:
    """A witness's Ed25519 cosigning key."""

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        self.name = name
        self._private = private_key
        self._public = private_key.public_key().public_bytes_raw()
        self.key_id = cosignature_key_id(name, self._public)

    @classmethod
    def from_note_signer(cls, signer: NoteSigner) -> Cosigner:
        """The cosigner with the seed (and name) of a Roost signer key."""
        # PRIVATE+KEY+<name>+<key ID>+<base64(0x01 || seed)>; names hold no '+'.
        key64 = signer.skey().removeprefix("PRIVATE+KEY+").split("+", 2)[2]
        seed = b64decode_strict(key64, "signer key")[1:]
        return cls(signer.name, Ed25519PrivateKey.from_private_bytes(seed))

    def vkey(self) -> str:
        key = b64encode(bytes([ALG_COSIGNATURE_V1]) + self._public)
        return f"{self.name}+{self.key_id:08x}+{key}"

    def verifier(self) -> CosignatureVerifier:
        return CosignatureVerifier(self.name, self._public)

    def cosign(self, checkpoint_text: str, timestamp: int | None = None) -> str:
        """The cosignature line (ending in a newline) of a checkpoint text."""
        when = int(time.time()) if timestamp is None else timestamp
        sig = self._private.sign(signed_message(checkpoint_text, when))
        blob = self.key_id.to_bytes(4, "big") + when.to_bytes(8, "big") + sig
        return f"{_SIG_PREFIX}{self.name} {b64encode(blob)}\n"


class CosignatureVerifier:
    """Checks one witness's cosignatures."""

    def __init__(self, name: str, public_key: bytes) -> None:
        if len(public_key) != 32:
            raise CheckpointError("witness key: an Ed25519 public key is 32 bytes")
        self.name = name
        self._public = Ed25519PublicKey.from_public_bytes(public_key)
        self.key_id = cosignature_key_id(name, public_key)

    @classmethod
    def from_vkey(cls, vkey: str) -> CosignatureVerifier:
        """Parses ``<name>+<hex key ID>+base64(0x04 || public key)``."""
        parts = vkey.strip().split("+", 2)
        if len(parts) != 3 or not parts[0] or len(parts[1]) != 8:
            raise CheckpointError("witness key: want <name>+<8 hex digits>+<base64 key>")
        name, hex8, key64 = parts
        try:
            raw = b64decode_strict(key64, "witness key")
            want = int(hex8, 16)
        except ValueError as exc:
            raise CheckpointError(f"witness key: {exc}") from None
        if len(raw) != 33 or raw[0] != ALG_COSIGNATURE_V1:
            raise CheckpointError(
                "witness key: not an Ed25519 cosignature/v1 key (type 0x04, 32 bytes)"
            )
        verifier = cls(name, raw[1:])
        if verifier.key_id != want:
            raise CheckpointError("witness key: key ID does not match name and key")
        return verifier

    def timestamp(self, note: str) -> int | None:
        """The time of this witness's valid cosignature on ``note``; None if it has none.
        CheckpointError if one of its lines does not verify."""
        text, sigs = split_note(note)
        found = None
        for name, kid, blob in sigs:
            if name != self.name or kid != self.key_id:
                continue
            if len(blob) != 8 + 64:
                raise CheckpointError(f"cosignature by {self.name}: wrong length")
            when = int.from_bytes(blob[:8], "big")
            try:
                if when > _MAX_TIMESTAMP:
                    raise InvalidSignature
                self._public.verify(blob[8:], signed_message(text, when))
            except InvalidSignature:
                raise CheckpointError(f"cosignature by {self.name} does not verify") from None
            found = when
        return found


def require_cosignatures(
    note: str, witnesses: Sequence[CosignatureVerifier], minimum: int
) -> tuple[str, ...]:
    """The names of the ``witnesses`` that validly cosigned ``note``; CheckpointError if
    fewer than ``minimum`` did (each witness counts once)."""
    names: list[str] = []
    seen: set[tuple[str, int]] = set()
    for witness in witnesses:
        if (witness.name, witness.key_id) in seen:
            continue
        seen.add((witness.name, witness.key_id))
        if witness.timestamp(note) is not None:
            names.append(witness.name)
    if len(names) < minimum:
        got = ", ".join(names) or "none"
        raise CheckpointError(
            f"the checkpoint has {len(names)} valid cosignature(s) of the given witness"
            f" keys ({got}), {minimum} required"
        )
    return tuple(names)
