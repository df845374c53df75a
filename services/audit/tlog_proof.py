"""C2SP transparency log proofs (https://c2sp.org/tlog-proof), strict encoding and parsing.

A proof is an offline-verifiable claim that an entry is in a log: lines separated by
``\\n``::

    c2sp.org/tlog-proof@v1
    extra <base64 of opaque extra data>         (optional; omitted when there is none)
    index <leaf index, ASCII decimal, no leading zeros unless 0>
    <base64 SHA-256 hash>                        (zero or more lines: the RFC 6962
    ...                                          inclusion proof, from the leaf's sibling
                                                 up to the root's child)
                                                 (an empty line)
    <the checkpoint signed note, verbatim>       (C2SP tlog-checkpoint)

Base64 is the standard alphabet with padding (RFC 4648 section 4). The extra data is not
authenticated by the proof itself: the Roost audit bundle puts the leaf's *record* there,
and its leaf hash is what the inclusion proof authenticates. Files use the extension
``.tlog-proof``.

:meth:`TlogProof.parse` is strict: exact header line, canonical decimal and base64,
32-byte hashes, at most 64 of them, and a non-empty checkpoint ending with a newline.
It checks only the shape; verifying the checkpoint's signatures and the inclusion proof
is the caller's job (see :mod:`services.audit.verify`).
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass
from typing import Final

from services.kit.encoding import b64decode_strict, b64encode

__all__ = ["HEADER", "MAX_PROOF_HASHES", "TlogProof", "TlogProofError"]

HEADER: Final = "c2sp.org/tlog-proof@v1"
HASH_SIZE: Final = 32
# An inclusion proof in a tree of at most 2**64 - 1 leaves has at most 64 hashes.
MAX_PROOF_HASHES: Final = 64
MAX_INDEX: Final = 2**64 - 1

_HASH_B64_CHARS: Final = 44
# Base64 digits whose 6 bits end in 00: the only canonical ones before a single "=".
_CANONICAL_LAST: Final = "AEIMQUYcgkosw048"
_EXTRA: Final = "extra"
_EXTRA_PREFIX: Final = "extra "
_INDEX_PREFIX: Final = "index "
# At most 20 digits (2**64 - 1 has 20), so int() never sees a huge string.
_DECIMAL_RE: Final = re.compile(r"0|[1-9][0-9]{0,19}", re.ASCII)


class TlogProofError(ValueError):
    """A malformed tlog-proof (or proof fields that cannot be encoded)."""


def _b64decode(text: str, what: str) -> bytes:
    """Strict standard base64 (see ``services.kit.encoding``); TlogProofError if not."""
    try:
        return b64decode_strict(text, what)
    except ValueError as e:
        raise TlogProofError(str(e)) from None


def _short(line: str) -> str:
    """A line for an error message: quoted, cut at 40 characters."""
    return repr(line if len(line) <= 40 else line[:40] + "...")


@dataclass(frozen=True, slots=True)
class TlogProof:
    """One proof: entry ``index``, its inclusion proof ``hashes``, the signed ``checkpoint``.

    ``hashes`` go from the leaf's sibling up to the root's child (RFC 9162 order), each 32
    bytes. ``checkpoint`` is the signed note verbatim. ``extra`` is opaque, non-empty data
    (``None`` when absent: the format cannot tell empty data from none).
    """

    index: int
    hashes: tuple[bytes, ...]
    checkpoint: str
    extra: bytes | None = None

    def __post_init__(self) -> None:
        if isinstance(self.index, bool) or not isinstance(self.index, int):
            raise TlogProofError(f"index must be an integer, got {type(self.index).__name__}")
        if not 0 <= self.index <= MAX_INDEX:
            raise TlogProofError(f"index {self.index} is not in [0, 2^64)")
        if not isinstance(self.hashes, tuple):
            raise TlogProofError("hashes must be a tuple of 32-byte hashes")
        if len(self.hashes) > MAX_PROOF_HASHES:
            raise TlogProofError(
                f"inclusion proof has {len(self.hashes)} hashes, at most {MAX_PROOF_HASHES}"
            )
        for i, h in enumerate(self.hashes):
            if not isinstance(h, bytes) or len(h) != HASH_SIZE:
                raise TlogProofError(f"hashes[{i}] must be {HASH_SIZE} bytes")
        if self.extra is not None and (not isinstance(self.extra, bytes) or not self.extra):
            raise TlogProofError("extra must be non-empty bytes, or None when there is none")
        _check_checkpoint(self.checkpoint)

    def marshal(self) -> str:
        """The proof text; ``TlogProof.parse(p.marshal()) == p``."""
        lines = [HEADER]
        if self.extra is not None:
            lines.append(_EXTRA_PREFIX + b64encode(self.extra))
        lines.append(f"{_INDEX_PREFIX}{self.index:d}")
        lines.extend(b64encode(h) for h in self.hashes)
        lines.append("")
        return "\n".join(lines) + "\n" + self.checkpoint

    @classmethod
    def parse(cls, text: str) -> TlogProof:
        """Parses a proof strictly; raises TlogProofError naming the line and the problem."""
        if not isinstance(text, str):
            raise TlogProofError(f"proof must be text, got {type(text).__name__}")
        # Proof lines are never empty, so the first empty line ends them.
        sep = text.find("\n\n")
        if sep < 0:
            raise TlogProofError("no empty line between the proof lines and the checkpoint")
        head = text[:sep].split("\n")
        if head[0] != HEADER:
            raise TlogProofError(f"line 1 must be {HEADER!r}, got {_short(head[0])}")
        pos = 1
        extra: bytes | None = None
        if pos < len(head) and head[pos].split(" ", 1)[0] == _EXTRA:
            extra = _parse_extra(head[pos], pos + 1)
            pos += 1
        if pos >= len(head):
            raise TlogProofError(f"line {pos + 1}: missing the 'index <n>' line")
        index = _parse_index(head[pos], pos + 1)
        pos += 1
        count = len(head) - pos
        if count > MAX_PROOF_HASHES:
            raise TlogProofError(f"inclusion proof has {count} hashes, at most {MAX_PROOF_HASHES}")
        hashes: list[bytes] = []
        for n, line in enumerate(head[pos:], start=pos + 1):
            hashes.append(_decode_hash(line, n))
        checkpoint = text[sep + 2 :]
        _check_checkpoint(checkpoint)
        # Every field is checked above: skip __post_init__ (verifiers parse 1e5 proofs).
        proof = object.__new__(cls)
        object.__setattr__(proof, "index", index)
        object.__setattr__(proof, "hashes", tuple(hashes))
        object.__setattr__(proof, "checkpoint", checkpoint)
        object.__setattr__(proof, "extra", extra)
        return proof


def _parse_extra(line: str, n: int) -> bytes:
    """The ``extra <base64>`` line (line ``n``): its non-empty data."""
    if not line.startswith(_EXTRA_PREFIX):
        raise TlogProofError(f"line {n}: want 'extra <base64>', got {_short(line)}")
    extra = _b64decode(line[len(_EXTRA_PREFIX) :], f"line {n}: extra data")
    if not extra:
        raise TlogProofError(f"line {n}: extra data is empty (omit the line when there is none)")
    return extra


def _parse_index(line: str, n: int) -> int:
    """The ``index <n>`` line (line ``n``): a canonical decimal below 2^64."""
    if not line.startswith(_INDEX_PREFIX):
        raise TlogProofError(f"line {n}: want 'index <n>', got {_short(line)}")
    digits = line[len(_INDEX_PREFIX) :]
    if _DECIMAL_RE.fullmatch(digits) is None:
        raise TlogProofError(
            f"line {n}: index {_short(digits)} is not a decimal without leading zeros"
        )
    index = int(digits)
    if index > MAX_INDEX:
        raise TlogProofError(f"line {n}: index does not fit in 64 bits")
    return index


def _decode_hash(line: str, n: int) -> bytes:
    """A base64 proof hash line: canonical, 32 bytes."""
    # Fast path: 43 data characters then "=", the last one with its 2 low bits zero
    # (canonical); strict decoding then checks the alphabet and the padding.
    if len(line) == _HASH_B64_CHARS and line[-2] in _CANONICAL_LAST:
        try:
            h = binascii.a2b_base64(line, strict_mode=True)
        except ValueError:
            pass
        else:
            if len(h) == HASH_SIZE:
                return h
    h = _b64decode(line, f"line {n}: proof hash")
    if len(h) != HASH_SIZE:
        raise TlogProofError(f"line {n}: proof hash is {len(h)} bytes, want {HASH_SIZE}")
    return h


def _check_checkpoint(checkpoint: object) -> None:
    if not isinstance(checkpoint, str):
        raise TlogProofError("checkpoint must be text")
    if not checkpoint:
        raise TlogProofError("checkpoint is missing after the empty line")
    if checkpoint[0] == "\n":
        raise TlogProofError("checkpoint starts with an empty line (one empty line expected)")
    if checkpoint[-1] != "\n":
        raise TlogProofError("checkpoint does not end with a newline (truncated?)")
