"""Logging that stays quiet under floods: at most one line per reason per interval.

A hostile or broken client can send thousands of bad messages a second; logging each
one would fill the disk and bury everything else. :class:`RateLimitedLog` logs the
first occurrence of a reason at once, then at most one line per ``interval`` seconds
per reason, saying how many were suppressed in between. Memory is bounded: at most
``max_reasons`` reasons are tracked (the least recently seen is forgotten first), so
an attacker who varies the reason (e.g. a topic) cannot grow it.

Reasons are fixed strings chosen by the caller (``"bad_json"``, ``"unknown_command"``),
never a payload or a household value; ``detail`` may name a topic or a field, never a
reading.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable

DEFAULT_INTERVAL_SECONDS = 60.0
DEFAULT_MAX_REASONS = 256


class RateLimitedLog:
    """``log(reason, message, *args)`` at most once per ``interval`` per reason."""

    def __init__(
        self,
        logger: logging.Logger,
        level: int = logging.WARNING,
        *,
        interval: float = DEFAULT_INTERVAL_SECONDS,
        max_reasons: int = DEFAULT_MAX_REASONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval <= 0 or max_reasons < 1:
            raise ValueError("interval must be > 0 and max_reasons >= 1")
        self._logger = logger
        self._level = level
        self._interval = interval
        self._max = max_reasons
        self._clock = clock
        # reason -> (time of the last line logged, occurrences suppressed since)
        self._seen: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def __call__(self, reason: str, message: str, *args: object) -> bool:
        """Log unless ``reason`` was logged less than ``interval`` ago; True if logged."""
        now = self._clock()
        last = self._seen.get(reason)
        if last is not None and now - last[0] < self._interval:
            self._seen[reason] = (last[0], last[1] + 1)
            self._seen.move_to_end(reason)
            return False
        suppressed = 0 if last is None else last[1]
        self._seen[reason] = (now, 0)
        self._seen.move_to_end(reason)
        while len(self._seen) > self._max:
            self._seen.popitem(last=False)
        if not self._logger.isEnabledFor(self._level):
            return False
        if suppressed:
            message = f"{message} (and {suppressed} more like it in the last %.0f s)"
            args = (*args, now - last[0] if last is not None else 0.0)
        self._logger.log(self._level, message, *args)
        return True

    @property
    def tracked(self) -> int:
        """How many reasons are remembered now (at most ``max_reasons``)."""
        return len(self._seen)
