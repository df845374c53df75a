"""Decision ids: time-ordered UUIDs (RFC 9562 version 7)."""

from __future__ import annotations

import os
import time
import uuid


def uuid7() -> str:
    """A time-ordered UUID (RFC 9562 version 7) as 32 hex digits: unique like uuid4, but
    consecutive decisions sort together, so the audit log's id index grows at its end."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (
        (ms & ((1 << 48) - 1)) << 80
        | 0x7 << 76
        | ((rand >> 62) & 0xFFF) << 64
        | 0b10 << 62
        | (rand & ((1 << 62) - 1))
    )
    return uuid.UUID(int=value).hex
