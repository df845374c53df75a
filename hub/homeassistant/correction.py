"""What the owner sees after pressing "that was wrong": the decision entity corrected.

The entity's latest decision is sent again (same ``decision_id``, so consumers that count
decisions still dedupe it) with ``feedback`` = "corrected by you", the
``corrected_label`` and ``corrected_at``: the entity's state shows the owner's label,
its attributes say it was corrected, and the audited ``label`` stays what Roost decided.
The logbook confirms it in words (``confirmation``). A newer decision replaces it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

CORRECTED_BY_YOU = "corrected by you"


@dataclass
class Latest:
    """The latest recorded decision of one (model, area) entity, as published."""

    decision_id: str
    label: str
    topic: str
    payload: bytes


def corrected(latest: Latest, label: str, at: datetime | None = None) -> Latest:
    """``latest`` as sent again once the owner said it was ``label``."""
    doc = json.loads(latest.payload)
    doc |= {
        "feedback": CORRECTED_BY_YOU,
        "corrected_label": label,
        "corrected_at": (at or datetime.now(UTC)).isoformat(),
    }
    payload = json.dumps(doc, separators=(",", ":")).encode()
    return Latest(latest.decision_id, latest.label, latest.topic, payload)


def confirmation(model: str, area: str, decided: str, label: str) -> str:
    """The logbook line: which entity, what Roost said, what the owner said."""
    room = area.replace("_", " ")
    return (
        f"recorded your correction of {model} in {room}: it was {label}, not {decided}."
        " Roost learns from it."
    )
