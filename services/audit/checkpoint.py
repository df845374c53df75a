"""Signed checkpoints of the audit log (C2SP tlog-checkpoint in a C2SP signed note).

A checkpoint commits to the audit log's Merkle tree at a given size::

    roost.local/hub/<hub_id>
    <tree size, decimal>
    <base64 root hash>
    [extension lines]

and is published as a signed note (https://c2sp.org/signed-note): the text, a blank
line, then one line per signature, ``— <key name> <base64(key ID || signature)>``.
Only Ed25519 (signature type 0x01) is implemented; key strings use the formats of
golang.org/x/mod/sumdb/note, so keys and notes interoperate with the Go tooling:

* verifier key: ``<name>+<8 hex key ID>+<base64(0x01 || public key)>``
* signer key:   ``PRIVATE+KEY+<name>+<8 hex key ID>+<base64(0x01 || seed)>``

where key ID = SHA-256(name || 0x0A || 0x01 || public key)[:4], big-endian.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from services.kit.encoding import b64decode_strict, b64encode

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "KeyFileError",
    "NoteSigner",
    "NoteVerifier",
    "export_vkey",
    "load_or_create_signer",
    "sign_checkpoint",
    "split_note",
    "verify_checkpoint",
]

ALG_ED25519 = 0x01
ROOT_HASH_SIZE = 32  # RFC 6962 with SHA-256
MAX_TREE_SIZE = 2**64 - 1
# The signed-note spec asks verifiers to accept at least 16 signatures; Go allows 100.
MAX_SIGNATURES = 100

_SIG_PREFIX = "\u2014 "  # em dash, space
_PRIVATE_PREFIX = "PRIVATE+KEY+"
_SIZE_RE = re.compile(r"0|[1-9][0-9]*", re.ASCII)
_HEX8_RE = re.compile(r"[0-9a-fA-F]{8}", re.ASCII)
_CONTROL_RE = re.compile(r"[\x00-\x09\x0b-\x1f]")


class CheckpointError(ValueError):
    """A malformed checkpoint, note or key, or a note that does not verify."""


class KeyFileError(CheckpointError):
    """The signer key file is unsafe (permissions, owner, type) or malformed."""


# --------------------------------------------------------------------------- helpers


def _b64decode(data: str, what: str) -> bytes:
    """Strict standard base64 (see ``services.kit.encoding``); CheckpointError if not."""
    try:
        return b64decode_strict(data, what)
    except ValueError as e:
        raise CheckpointError(str(e)) from None


def _check_text_chars(text: str, what: str) -> None:
    """Signed notes are valid UTF-8 without ASCII control characters other than newline."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # lone surrogates
        raise CheckpointError(f"{what}: not valid UTF-8") from e
    if _CONTROL_RE.search(text):
        raise CheckpointError(f"{what}: contains a control character")


def _is_valid_name(name: str) -> bool:
    """Key names: non-empty, no Unicode spaces, no '+', no control characters."""
    return (
        name != ""
        and "+" not in name
        and not any(ch.isspace() for ch in name)
        and _CONTROL_RE.search(name) is None
        and _is_utf8(name)
    )


def _is_utf8(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_name(name: str) -> None:
    if not _is_valid_name(name):
        raise CheckpointError(
            f"invalid key name {name!r}: must be non-empty, without spaces, '+' "
            "or control characters"
        )


def key_id(name: str, public_key: bytes) -> int:
    """The signed-note key ID of an Ed25519 key: SHA-256(name || LF || 0x01 || key)[:4]."""
    digest = hashlib.sha256(
        name.encode("utf-8") + b"\n" + bytes([ALG_ED25519]) + public_key
    ).digest()
    return int.from_bytes(digest[:4], "big")


def _format_key(name: str, kid: int, key: bytes) -> str:
    return f"{name}+{kid:08x}+{b64encode(bytes([ALG_ED25519]) + key)}"


def _parse_hash(hex8: str, what: str) -> int:
    if _HEX8_RE.fullmatch(hex8) is None:
        raise CheckpointError(f"{what}: key ID must be 8 hex digits")
    return int(hex8, 16)


def _decode_alg_key(key64: str, what: str) -> bytes:
    raw = _b64decode(key64, what)
    if not raw:
        raise CheckpointError(f"{what}: empty key")
    if raw[0] != ALG_ED25519:
        raise CheckpointError(f"{what}: unknown signature algorithm {raw[0]:#04x}")
    if len(raw) != 33:
        raise CheckpointError(f"{what}: Ed25519 key must be 32 bytes, got {len(raw) - 1}")
    return raw[1:]


# --------------------------------------------------------------------------- checkpoint


@dataclass(frozen=True)
class Checkpoint:
    """The note text of a C2SP tlog-checkpoint."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.origin, str) or not self.origin:
            raise CheckpointError("checkpoint origin must be a non-empty string")
        if "\n" in self.origin:
            raise CheckpointError("checkpoint origin must be a single line")
        _check_text_chars(self.origin, "checkpoint origin")
        if (
            isinstance(self.size, bool)
            or not isinstance(self.size, int)
            or not 0 <= self.size <= MAX_TREE_SIZE
        ):
            raise CheckpointError(
                f"checkpoint size must be an integer in [0, 2^64), got {self.size!r}"
            )
        if not isinstance(self.root_hash, bytes) or len(self.root_hash) != ROOT_HASH_SIZE:
            raise CheckpointError(f"checkpoint root hash must be {ROOT_HASH_SIZE} bytes")
        if not isinstance(self.extensions, tuple):
            raise CheckpointError("checkpoint extensions must be a tuple of strings")
        for ext in self.extensions:
            if not isinstance(ext, str) or not ext or "\n" in ext:
                raise CheckpointError("checkpoint extension lines must be non-empty single lines")
            _check_text_chars(ext, "checkpoint extension line")

    def body(self) -> str:
        """The note text: origin, size, base64 root hash, extensions; each line ends in LF."""
        lines = [self.origin, str(self.size), b64encode(self.root_hash), *self.extensions]
        return "".join(line + "\n" for line in lines)

    @classmethod
    def parse(cls, body: str) -> Checkpoint:
        """Parse a checkpoint note text strictly; raises CheckpointError."""
        if not body.endswith("\n"):
            raise CheckpointError("checkpoint text must end with a newline")
        _check_text_chars(body, "checkpoint text")
        lines = body[:-1].split("\n")
        if len(lines) < 3:
            raise CheckpointError(
                f"checkpoint needs origin, size and root hash lines, got {len(lines)} line(s)"
            )
        origin, size_s, root_s, *exts = lines
        if not origin:
            raise CheckpointError("checkpoint origin line is empty")
        if _SIZE_RE.fullmatch(size_s) is None:
            raise CheckpointError(
                f"checkpoint size {size_s!r} is not a decimal without leading zeros"
            )
        size = int(size_s)
        if size > MAX_TREE_SIZE:
            raise CheckpointError("checkpoint size does not fit in 64 bits")
        root = _b64decode(root_s, "checkpoint root hash")
        if len(root) != ROOT_HASH_SIZE:
            raise CheckpointError(
                f"checkpoint root hash is {len(root)} bytes, expected {ROOT_HASH_SIZE}"
            )
        if any(not ext for ext in exts):
            raise CheckpointError("checkpoint extension lines must be non-empty")
        return cls(origin=origin, size=size, root_hash=root, extensions=tuple(exts))


# --------------------------------------------------------------------------- signed notes


def split_note(note: str) -> tuple[str, list[tuple[str, int, bytes]]]:
    """Split a signed note into its text and (name, key ID, signature) triples."""
    _check_text_chars(note, "malformed note")
    split = note.rfind("\n\n")
    if split < 0:
        raise CheckpointError("malformed note: no blank line before the signatures")
    text, block = note[: split + 1], note[split + 2 :]
    if not block or not block.endswith("\n"):
        raise CheckpointError(
            "malformed note: signature block must be non-empty lines ending in LF"
        )
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise CheckpointError(f"malformed note: more than {MAX_SIGNATURES} signatures")
    sigs: list[tuple[str, int, bytes]] = []
    for line in lines:
        if not line.startswith(_SIG_PREFIX):
            raise CheckpointError("malformed note: signature line does not start with '\u2014 '")
        name, sep, b64 = line[len(_SIG_PREFIX) :].partition(" ")
        if not sep or not b64 or not _is_valid_name(name):
            raise CheckpointError("malformed note: bad signature line")
        raw = _b64decode(b64, "malformed note: signature")
        if len(raw) < 5:
            raise CheckpointError("malformed note: signature too short")
        sigs.append((name, int.from_bytes(raw[:4], "big"), raw[4:]))
    return text, sigs


class NoteVerifier:
    """Verifies signed notes against one pinned Ed25519 verifier key."""

    def __init__(self, name: str, public_key: bytes) -> None:
        _check_name(name)
        if len(public_key) != 32:
            raise CheckpointError("Ed25519 public key must be 32 bytes")
        self._name = name
        self._public_bytes = bytes(public_key)
        self._public = Ed25519PublicKey.from_public_bytes(self._public_bytes)
        self._key_id = key_id(name, self._public_bytes)

    @classmethod
    def from_vkey(cls, vkey: str) -> NoteVerifier:
        """Parse ``<name>+<hex key ID>+<base64(0x01 || public key)>``."""
        parts = vkey.split("+", 2)
        if len(parts) != 3:
            raise CheckpointError("malformed verifier key: want <name>+<hash>+<key>")
        name, hex8, key64 = parts
        _check_name(name)
        want = _parse_hash(hex8, "malformed verifier key")
        public = _decode_alg_key(key64, "malformed verifier key")
        verifier = cls(name, public)
        if verifier.key_id != want:
            raise CheckpointError("verifier key: key ID does not match name and key")
        return verifier

    @property
    def name(self) -> str:
        return self._name

    @property
    def key_id(self) -> int:
        return self._key_id

    def vkey(self) -> str:
        return _format_key(self._name, self._key_id, self._public_bytes)

    def verify(self, note: str) -> str:
        """Return the note text if it carries a valid signature by this key.

        Signatures by other keys (another name or key ID) are ignored, as the spec
        requires. Every signature by this key must verify; at least one must be present.
        """
        text, sigs = split_note(note)
        data = text.encode("utf-8")
        found = False
        for name, kid, sig in sigs:
            if name != self._name or kid != self._key_id:
                continue
            try:
                if len(sig) != 64:
                    raise InvalidSignature
                self._public.verify(sig, data)
            except InvalidSignature:
                raise CheckpointError(
                    f"invalid signature for key {self._name}+{self._key_id:08x}"
                ) from None
            found = True
        if not found:
            raise CheckpointError(f"note has no signature by key {self._name}+{self._key_id:08x}")
        return text

    def __repr__(self) -> str:
        return f"NoteVerifier({self.vkey()!r})"


class NoteSigner:
    """Signs notes with an Ed25519 key. ``skey()`` is secret; ``vkey()`` is for auditors."""

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        _check_name(name)
        self._name = name
        self._private = private_key
        self._public_bytes = private_key.public_key().public_bytes_raw()
        self._key_id = key_id(name, self._public_bytes)

    @classmethod
    def generate(cls, name: str) -> NoteSigner:
        return cls(name, Ed25519PrivateKey.generate())

    @classmethod
    def from_skey(cls, skey: str) -> NoteSigner:
        """Parse ``PRIVATE+KEY+<name>+<hex key ID>+<base64(0x01 || seed)>``."""
        if not skey.startswith(_PRIVATE_PREFIX):
            raise CheckpointError("malformed signer key: must start with PRIVATE+KEY+")
        parts = skey[len(_PRIVATE_PREFIX) :].split("+", 2)
        if len(parts) != 3:
            raise CheckpointError("malformed signer key: want PRIVATE+KEY+<name>+<hash>+<key>")
        name, hex8, key64 = parts
        _check_name(name)
        want = _parse_hash(hex8, "malformed signer key")
        seed = _decode_alg_key(key64, "malformed signer key")
        signer = cls(name, Ed25519PrivateKey.from_private_bytes(seed))
        if signer.key_id != want:
            raise CheckpointError("signer key: key ID does not match name and key")
        return signer

    @property
    def name(self) -> str:
        return self._name

    @property
    def key_id(self) -> int:
        return self._key_id

    def skey(self) -> str:
        seed = self._private.private_bytes_raw()
        return _PRIVATE_PREFIX + _format_key(self._name, self._key_id, seed)

    def vkey(self) -> str:
        return _format_key(self._name, self._key_id, self._public_bytes)

    def verifier(self) -> NoteVerifier:
        return NoteVerifier(self._name, self._public_bytes)

    def sign(self, text: str) -> str:
        """Return the signed note: text, blank line, this key's signature line."""
        if not text.endswith("\n"):
            raise CheckpointError("malformed note: text must end with a newline")
        _check_text_chars(text, "malformed note")
        sig = self._private.sign(text.encode("utf-8"))
        line = f"{_SIG_PREFIX}{self._name} {b64encode(self._key_id.to_bytes(4, 'big') + sig)}\n"
        return f"{text}\n{line}"

    def __repr__(self) -> str:  # never print the seed
        return f"NoteSigner(name={self._name!r}, key_id={self._key_id:08x})"


# --------------------------------------------------------------------------- key files


def load_or_create_signer(path: Path, name: str) -> NoteSigner:
    """Load the signer key at ``path``, creating it (mode 0600, atomically) if absent.

    Refuses a key file that is not a regular file, is readable or writable by group or
    others, belongs to another user, is malformed, or holds a key for another name.
    """
    _check_name(name)
    path = Path(path)
    try:
        return _load_signer(path, name)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    signer = NoteSigner.generate(name)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)
            data = (signer.skey() + "\n").encode("ascii")
            if os.write(fd, data) != len(data):
                raise OSError(f"short write to {tmp}")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            # link() never replaces: if another process created the key meanwhile, use it.
            os.link(tmp, path)
        except FileExistsError:
            return _load_signer(path, name)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return signer


def _load_signer(path: Path, name: str) -> NoteSigner:
    """Raises FileNotFoundError if absent, KeyFileError if unsafe or malformed."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise KeyFileError(f"signer key file {path} is a symbolic link") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"signer key file {path} is not a regular file")
        if st.st_mode & 0o077:
            raise KeyFileError(
                f"signer key file {path} has mode {stat.S_IMODE(st.st_mode):04o}; "
                "it must not be accessible by group or others (chmod 600)"
            )
        if st.st_uid != os.geteuid():
            raise KeyFileError(f"signer key file {path} is owned by uid {st.st_uid}, not by us")
        content = os.read(fd, 4096)
    finally:
        os.close(fd)
    try:
        text = content.decode("ascii")
    except UnicodeDecodeError:
        raise KeyFileError(f"signer key file {path} is malformed: not ASCII") from None
    skey = text.removesuffix("\n")
    try:
        signer = NoteSigner.from_skey(skey)
    except CheckpointError as e:
        raise KeyFileError(f"signer key file {path} is malformed: {e}") from None
    if signer.name != name:
        raise KeyFileError(
            f"signer key file {path} holds a key named {signer.name!r}, expected {name!r}"
        )
    return signer


def export_vkey(signer: NoteSigner) -> str:
    """The verifier key auditors pin (``roost audit`` prints it)."""
    return signer.vkey()


# --------------------------------------------------------------------------- convenience


def sign_checkpoint(signer: NoteSigner, cp: Checkpoint) -> str:
    return signer.sign(cp.body())


def verify_checkpoint(verifier: NoteVerifier, note: str, origin: str) -> Checkpoint:
    """Verify ``note`` with ``verifier`` and parse it; the origin must be ``origin``."""
    cp = Checkpoint.parse(verifier.verify(note))
    if cp.origin != origin:
        raise CheckpointError(f"checkpoint origin {cp.origin!r} does not match expected {origin!r}")
    return cp
