"""What the personalization service stored: its example store, read-only, for assertions."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from cli.stack import Stack


@dataclass(frozen=True)
class StoredExample:
    label: str
    source: str
    observed_at: float  # epoch seconds
    input: bytes  # the features, little-endian float32

    def features(self) -> npt.NDArray[np.float32]:
        return np.frombuffer(self.input, dtype="<f4")


def stored_examples(stack: Stack, model: str = "occupancy") -> list[StoredExample]:
    """The stack's personalization examples of ``model``, in the order they were stored."""
    path = stack.home / "data" / "personalization" / "examples.db"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "SELECT label, source, observed_at_us, input FROM examples WHERE model = ?"
            " ORDER BY seq",
            (model,),
        ).fetchall()
    return [StoredExample(str(a), str(b), us / 1e6, bytes(c)) for a, b, us, c in rows]
