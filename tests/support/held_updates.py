"""Did the server ever hold an individual update? The check behind "the server process
never holds an individual update", over what the ServerApp recorded receiving
(``fleet/received.py``) and what each hub contributed before SecAgg+ masked it (its
``fleet.send`` records, ``fleet/egress.py``).

An array the server received *holds* a hub's contribution when it has the same bytes
(SHA-256 of the float32 vector), or when its values follow the contribution's: any affine
image (a quantized copy, a scaled or shifted one) has a correlation near 1 with it. A
masked vector (the quantized contribution plus uniform masks mod 2^32) has a correlation
near 0 (standard deviation 1/sqrt(n) for n values: 0.12 at the occupancy head's 66).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: |correlation| at or above this is a copy; 5 standard deviations of chance at n = 66.
MAX_CORRELATION = 0.6


@dataclass(frozen=True)
class Held:
    round: str
    node: int
    where: str
    hub: str
    why: str


def received(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64) - a.mean()
    b = b.astype(np.float64) - b.mean()
    denom = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / denom) if denom > 0 else 0.0


def held_updates(
    lines: Iterable[Mapping[str, Any]],
    contributions: Mapping[str, Mapping[str, np.ndarray]],
) -> tuple[list[Held], int]:
    """Every received array that holds a contribution of its round, and how many arrays
    of a contribution's size were compared (so a check of nothing does not pass).
    ``contributions``: round (the message group id) -> hub -> its float32 vector."""
    held: list[Held] = []
    compared = 0
    for line in lines:
        mine = contributions.get(str(line["round"]), {})
        for arr in line.get("arrays", []):
            values = np.asarray(arr["values"], np.float64)
            for hub, vector in mine.items():
                c = np.asarray(vector, "<f4")
                where = (str(line["round"]), int(line["node"]), str(arr["where"]), hub)
                if arr["sha256"] == hashlib.sha256(c.tobytes()).hexdigest():
                    held.append(Held(*where, "same bytes"))
                    continue
                if values.size != c.size:
                    continue
                compared += 1
                r = correlation(values, c)
                if abs(r) >= MAX_CORRELATION:
                    held.append(Held(*where, f"correlation {r:.3f}"))
    return held, compared
