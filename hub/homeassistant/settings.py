"""What the homeowner sets from Home Assistant: learning mode, thresholds, label choices.

The settings persist in ``<data_dir>/ha_settings.json`` (a missing or unreadable file
means the configured defaults; an invalid field keeps its default) and are published
retained on the entities' state topics.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

# "learning": personalization runs; "paused": no training and no fleet rounds;
# "local-only": no fleet rounds. Enforced by the personalization service, which the hub
# sends the mode to (hub/homeassistant/learning_sync.py).
LEARNING_MODES = ("learning", "paused", "local-only")

# The numeric settings: entity name, min, max, step.
NUMBERS: dict[str, tuple[str, float, float, float]] = {
    "occupancy_threshold": ("Occupancy threshold", 0.05, 0.95, 0.05),
    "drift_psi_alert": ("Drift alert level (PSI)", 0.05, 2.0, 0.05),
}

_NUMBER = re.compile(r"^-?[0-9]{1,6}(\.[0-9]{1,6})?$")


def parse_number(text: str, lo: float, hi: float) -> float | None:
    """A number entity's command as a value in ``[lo, hi]``; None if it is not one."""
    if not _NUMBER.match(text):
        return None
    value = float(text)
    return value if lo <= value <= hi else None


@dataclass
class Settings:
    """What the homeowner sets from Home Assistant; persisted across restarts."""

    learning_mode: str = "learning"
    occupancy_threshold: float = 0.5
    drift_psi_alert: float = 0.25
    # "<model>_<area>" -> the label chosen in "what was it?" (feedback of choice models).
    choices: dict[str, str] = field(default_factory=dict)

    def training_allowed(self) -> bool:
        """Paused learning: the hub starts no training (personalization refuses it too)."""
        return self.learning_mode != "paused"

    @classmethod
    def load(cls, path: Path, defaults: Settings) -> Settings:
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            return defaults
        s = Settings(**asdict(defaults))
        if doc.get("learning_mode") in LEARNING_MODES:
            s.learning_mode = doc["learning_mode"]
        for name in ("occupancy_threshold", "drift_psi_alert"):
            if isinstance(doc.get(name), int | float):
                setattr(s, name, float(doc[name]))
        if isinstance(doc.get("choices"), dict):
            s.choices = {str(k): str(v) for k, v in doc["choices"].items()}
        return s

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.replace(path)
