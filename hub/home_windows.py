"""Home-wide event windows: models fed by binary sensors anywhere in the home.

The routine/presence model (``routine/v1``) sees the whole home at once: every door,
cupboard and appliance event, mapped to (area, kind) — never to a device id. Its
window is :class:`models.routine.spec.RoutineWindow`, the code training uses.
"""

from __future__ import annotations

from datetime import tzinfo

import numpy as np
import numpy.typing as npt

from models.routine.spec import AREAS, FEATURE_NAMES, KINDS, SPEC_ID, RoutineWindow, SensorRef

HOME_AREA = "home"
SPEC_IDS = frozenset({SPEC_ID})


class OutOfOrder(ValueError):
    """An event older than the window's latest one."""


class HomeEventWindow:
    """One home's routine window; readings outside its vocabulary are ignored."""

    kinds = frozenset(KINDS)
    feature_names = tuple(FEATURE_NAMES)

    def __init__(self, tz: tzinfo) -> None:
        self._window = RoutineWindow(tz)

    @staticmethod
    def accepts(area: str, kind: str) -> bool:
        return area in AREAS and kind in KINDS

    def update(self, area: str, kind: str, value: float, ts: float, source: str) -> bool:
        """Record a binary state change (1 on/open, 0 off/closed); True when ready."""
        try:
            return self._window.update(SensorRef(area, kind), 1.0 if value else 0.0, ts, source)
        except ValueError as e:
            raise OutOfOrder(str(e)) from None

    def tensor(self, ts: float) -> npt.NDArray[np.float32]:
        return self._window.tensor(ts)
