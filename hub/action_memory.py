"""What the hub last decided and did per allow-listed entity, kept across restarts.

An allow-listed action fires when its (model, area) label *changes*. Kept only in
memory, the last label is forgotten by a restart, so the first decision after it looked
like a change and fired the action again (a light the homeowner had switched back on was
switched off once more). :class:`ActionMemory` keeps, in ``<data_dir>/ha_actions.json``:

* ``labels``: the last acknowledged label per ``"<model>.<area>"`` that has rules;
* ``actions``: the last action called per Home Assistant entity (action, decision id,
  time), for ``roost`` to show and for the check against HA's current state.

Each change is written atomically and durably (a reader or a crash sees the old file or
the new one). A file that cannot be read (damaged, another version) is set aside as
``ha_actions.json.bad`` and the hub starts with an empty memory (logged once): the next
decision of each entity then counts as a change, as before this file existed.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.kit.files import write_atomic

log = logging.getLogger(__name__)

MEMORY_FILE = "ha_actions.json"


@dataclass
class ActionMemory:
    """Last labels and actions, persisted at ``path`` (None: in memory only, for tests)."""

    path: Path | None = None
    labels: dict[str, str] = field(default_factory=dict)
    actions: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> ActionMemory:
        if not path.is_file():
            return cls(path)
        try:
            data = json.loads(path.read_text())
            labels = {str(k): str(v) for k, v in dict(data["labels"]).items()}
            actions = {str(k): dict(v) for k, v in dict(data["actions"]).items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            path.replace(path.with_name(path.name + ".bad"))
            log.warning(
                "the action memory %s could not be read (%s); set aside as .bad, starting empty",
                path,
                type(e).__name__,
            )
            return cls(path)
        return cls(path, labels, actions)

    @staticmethod
    def key(model: str, area: str) -> str:
        return f"{model}.{area}"

    def label(self, model: str, area: str) -> str | None:
        return self.labels.get(self.key(model, area))

    def remember_label(self, model: str, area: str, label: str) -> None:
        """The label of an acknowledged decision; written only when it changed."""
        key = self.key(model, area)
        if self.labels.get(key) != label:
            self.labels[key] = label
            self._save()

    def remember_action(self, entity_id: str, action: str, decision_id: str) -> None:
        self.actions[entity_id] = {
            "action": action,
            "decision_id": decision_id,
            "at": round(time.time(), 3),
        }
        self._save()

    def _save(self) -> None:
        if self.path is None:
            return
        data = {"labels": self.labels, "actions": self.actions}
        write_atomic(self.path, json.dumps(data, indent=1, sort_keys=True).encode(), durable=True)
