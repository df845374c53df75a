"""One way to page a List/Query RPC: the size check and an opaque, filter-bound token.

``page_size`` 0 means the service's maximum; anything outside ``0..maximum`` is
``INVALID_ARGUMENT`` with the same message everywhere. A page token is URL-safe
base64 of a small JSON object (a format version, the cursor fields, and a
fingerprint of the query's filters), so a token from one query cannot be replayed
against another and a client cannot mistake it for an offset it may edit.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Final

from services.kit.errors import InvalidArgument

DEFAULT_MAX_PAGE_SIZE: Final = 100
_VERSION: Final = 1
_MAX_TOKEN_CHARS: Final = 512
_INVALID: Final = "page_token: invalid; pass back a next_page_token unchanged"

Cursor = Mapping[str, int | None]


def page_size(requested: int, maximum: int = DEFAULT_MAX_PAGE_SIZE) -> int:
    """The page size to serve: ``requested``, or ``maximum`` when it is 0."""
    if requested < 0 or requested > maximum:
        raise InvalidArgument(f"page_size: must be between 0 and {maximum} (0 means {maximum})")
    return requested or maximum


def _fingerprint(query: Sequence[object]) -> str:
    blob = json.dumps(list(query), separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def encode_token(cursor: Cursor, query: Sequence[object] = ()) -> str:
    """An opaque token for ``cursor`` (non-negative ints or None), bound to ``query``."""
    data = {"v": _VERSION, "f": _fingerprint(query), "c": dict(cursor)}
    blob = json.dumps(data, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(blob).decode().rstrip("=")


def decode_token(
    token: str, fields: Sequence[str], query: Sequence[object] = ()
) -> dict[str, int | None]:
    """The cursor in ``token`` ({} for the first page); ``INVALID_ARGUMENT`` if it was
    edited, is not ours, or was issued for a different query."""
    if not token:
        return {}
    if len(token) > _MAX_TOKEN_CHARS:
        raise InvalidArgument(_INVALID)
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise InvalidArgument(_INVALID) from None
    if not isinstance(data, dict) or data.get("v") != _VERSION:
        raise InvalidArgument(_INVALID)
    cursor = data.get("c")
    if not isinstance(cursor, dict) or set(cursor) != set(fields):
        raise InvalidArgument(_INVALID)
    if not all(v is None or (type(v) is int and 0 <= v < 2**63) for v in cursor.values()):
        raise InvalidArgument(_INVALID)
    if data.get("f") != _fingerprint(query):
        raise InvalidArgument("page_token: does not match the query's filters")
    return {str(k): v for k, v in cursor.items()}


def encode_offset(offset: int, query: Sequence[object] = ()) -> str:
    """The token of a page that starts at ``offset`` in a stable ordering."""
    return encode_token({"offset": offset}, query)


def decode_offset(token: str, query: Sequence[object] = ()) -> int:
    """The offset in a token from :func:`encode_offset` (0 for the first page)."""
    offset = decode_token(token, ("offset",), query).get("offset")
    return offset or 0
