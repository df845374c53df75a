"""Strict standard base64 (RFC 4648 section 4), the one way Roost decodes it.

Signed notes, tlog proofs, export bundles and the hub's local-candidate key all carry
binary values as base64 text. Each value has exactly one accepted spelling: the
standard alphabet, padded, canonical (unused low bits zero), no whitespace or line
breaks. :func:`b64decode_strict` enforces that; :func:`b64encode` produces it.
"""

from __future__ import annotations

import binascii

__all__ = ["b64decode_strict", "b64encode"]


def b64encode(raw: bytes) -> str:
    """Standard padded base64 of ``raw``, without a trailing newline."""
    return binascii.b2a_base64(raw, newline=False).decode("ascii")


def b64decode_strict(text: str, what: str) -> bytes:
    """The bytes ``text`` encodes; ValueError naming ``what`` unless it is the canonical
    standard base64 of them (``"<what> is not valid base64"`` for a bad alphabet,
    padding, length or a non-ASCII character, ``"<what> is not canonical base64"`` for
    non-zero unused bits)."""
    try:
        raw = binascii.a2b_base64(text, strict_mode=True)
    except (ValueError, TypeError):  # binascii.Error, a non-ASCII str, or not text
        raise ValueError(f"{what} is not valid base64") from None
    if binascii.b2a_base64(raw, newline=False) != text.encode("ascii"):
        raise ValueError(f"{what} is not canonical base64")
    return raw
