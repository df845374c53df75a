"""Feature windows: each model's rolling input, fed reading by reading.

Two kinds, one :class:`Window` protocol, so ingest feeds both the same way:

- :class:`AreaWindow`: a per-area model (occupancy, comfort, anomaly), one window per
  (model, area), :class:`models.features.FeatureWindow` inside.
- :class:`HomeEventWindow`: a home-wide model over the binary sensors anywhere in the
  home (``routine/v1``): every door, cupboard and appliance event, mapped to
  (area, kind) — never to a device id; :class:`models.routine.spec.RoutineWindow`
  inside. Its decisions are for the area ``home``.

Both wrap the code training uses, so the hub computes exactly the trained inputs.
"""

from __future__ import annotations

from datetime import tzinfo
from typing import Protocol

import numpy as np
import numpy.typing as npt

from models.features import FeatureSpec, FeatureWindow
from models.routine.spec import AREAS, FEATURE_NAMES, KINDS, SPEC_ID, RoutineWindow, SensorRef

HOME_AREA = "home"
# Feature specs of the home-wide models (a model served with one is fed a HomeEventWindow).
SPEC_IDS = frozenset({SPEC_ID})


class OutOfOrder(ValueError):
    """An event older than the window's latest one."""


class Window(Protocol):
    """One model's rolling input for one area (or the whole home)."""

    @property
    def feature_names(self) -> tuple[str, ...]: ...

    def update(self, area: str, kind: str, value: float, ts: float, source: str = "") -> bool:
        """Record a reading of ``kind`` in ``area`` at epoch ``ts`` (``source``: an opaque
        handle of the sensor, e.g. its topic). True when the input is ready; readings
        the window does not use are ignored. OutOfOrder if it cannot take the reading."""
        ...

    def tensor(self, ts: float) -> npt.NDArray[np.float32]:
        """The model input at reading time ``ts``; only when :meth:`update` said ready."""
        ...


class AreaWindow:
    """A per-area model's window: one :class:`FeatureWindow` (the area is the window's)."""

    def __init__(self, spec: FeatureSpec, tz: tzinfo) -> None:
        self._window = FeatureWindow(spec, tz)
        self.feature_names = tuple(spec.feature_names)

    def update(self, area: str, kind: str, value: float, ts: float, source: str = "") -> bool:
        return self._window.update(kind, value, ts)

    def tensor(self, ts: float) -> npt.NDArray[np.float32]:
        return self._window.tensor(ts)


class HomeEventWindow:
    """One home's routine window; readings outside its vocabulary are ignored."""

    kinds = frozenset(KINDS)
    feature_names = tuple(FEATURE_NAMES)

    def __init__(self, tz: tzinfo) -> None:
        self._window = RoutineWindow(tz)

    @staticmethod
    def accepts(area: str, kind: str) -> bool:
        return area in AREAS and kind in KINDS

    def update(self, area: str, kind: str, value: float, ts: float, source: str = "") -> bool:
        """Record a binary state change (1 on/open, 0 off/closed); True when ready."""
        if not self.accepts(area, kind):
            return False
        try:
            return self._window.update(SensorRef(area, kind), 1.0 if value else 0.0, ts, source)
        except ValueError as e:
            raise OutOfOrder(str(e)) from None

    def tensor(self, ts: float) -> npt.NDArray[np.float32]:
        return self._window.tensor(ts)
