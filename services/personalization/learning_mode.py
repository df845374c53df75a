"""The homeowner's learning mode, enforced where rounds and runs are computed.

Home Assistant's "Learning mode" select (the hub's ``ha_settings.json`` is the source of
truth) is sent here by the hub (``SetLearningMode``, hub only) at start, when it changes
and at each poll. This service keeps it in ``<data_dir>/learning_mode.json`` and
enforces it itself, since fleet rounds are driven from outside the hub (the SuperNode's
ClientApp calls ``ComputeFederatedUpdate`` directly):

* ``learning``: training and fleet rounds (when fleet is configured: no SuperNode, no
  round) are allowed;
* ``local-only``: ``ComputeFederatedUpdate`` is refused (FAILED_PRECONDITION, before
  anything is reserved in the ledger): the ClientApp sits the round out;
* ``paused``: that, and ``StartTraining`` is refused too.

Never set (no file): ``learning``, which is the behaviour before this setting was
enforced (rounds happen iff ``[fleet] enabled`` runs a SuperNode). A file that cannot be
read or holds no known mode fails closed: ``paused`` (no round, no run) until the hub
sends the mode again.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Final

from services.kit.errors import FailedPrecondition

logger = logging.getLogger(__name__)

LEARNING: Final = "learning"
PAUSED: Final = "paused"
LOCAL_ONLY: Final = "local-only"
#: The modes, as Home Assistant's select names them (hub/homeassistant/settings.py).
MODES: Final = (LEARNING, PAUSED, LOCAL_ONLY)
FILE_NAME: Final = "learning_mode.json"


def _refusal(mode: str, what: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"the homeowner set learning to {mode}: {what} (set in Home Assistant)"
    )


class LearningMode:
    """The persisted mode; :meth:`set` writes it durably before it takes effect."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        # Whether the file holds self._mode (a fail-closed mode is rewritten when set).
        self._stored = False
        self._mode = self._read()

    def _read(self) -> str:
        try:
            doc = json.loads(self._path.read_text())
        except FileNotFoundError:
            return LEARNING
        except (OSError, ValueError) as e:
            logger.error("%s unreadable (%s): learning paused until the hub sets it", self._path, e)
            return PAUSED
        mode = doc.get("mode") if isinstance(doc, dict) else None
        if mode not in MODES:
            logger.error(
                "%s holds no known mode: learning paused until the hub sets it", self._path
            )
            return PAUSED
        self._stored = True
        return str(mode)

    @property
    def mode(self) -> str:
        return self._mode

    def set(self, mode: str) -> bool:
        """Persist ``mode`` (fsynced, atomically replaced); True if it changed."""
        if mode not in MODES:
            raise ValueError(f"learning mode: must be one of {', '.join(MODES)}")
        with self._lock:
            if mode == self._mode and self._stored:
                return False
            self._path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._path.with_name(self._path.name + ".tmp")
            with open(tmp, "w") as f:
                f.write(json.dumps({"mode": mode}))
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(self._path)
            changed = mode != self._mode
            self._mode, self._stored = mode, True
        if changed:
            logger.info("learning mode set to %s by the hub", mode)
        return changed

    def check_fleet_round(self) -> None:
        """Raises FailedPrecondition unless fleet rounds are allowed."""
        if self._mode != LEARNING:
            raise _refusal(self._mode, "no fleet rounds")

    def check_training(self) -> None:
        """Raises FailedPrecondition while learning is paused."""
        if self._mode == PAUSED:
            raise _refusal(self._mode, "no training runs")
