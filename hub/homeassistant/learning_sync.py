"""The homeowner's learning mode, sent to the personalization service that enforces it.

The hub's settings file (``ha_settings.json``, set from Home Assistant's "Learning
mode" select) is the source of truth. Fleet rounds do not pass through the hub (the
SuperNode's ClientApp calls ``ComputeFederatedUpdate`` itself), so the mode is binding
only where a round is computed: the personalization service, which persists it and
refuses rounds (``local-only``, ``paused``) and runs (``paused``).

:meth:`LearningModeSync.sync` sends the mode (``SetLearningMode``, as the hub). The
coordinator calls it at every poll (so at hub start, and again after the service was
restarted, reinstalled or unreachable) and the bridge right after the homeowner changed
the mode. A failed send is logged and retried at the next poll; the service keeps the
last mode it was sent meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

import grpc

from hub.homeassistant.settings import Settings
from roost.personalization.v1 import personalization_service_pb2 as pers_pb
from roost.personalization.v1 import personalization_service_pb2_grpc as pers_grpc
from services.kit.peers import peer_error

log = logging.getLogger(__name__)

#: Home Assistant's option -> the service's enum (hub/homeassistant/settings.py LEARNING_MODES).
MODES: Final[dict[str, pers_pb.LearningMode.ValueType]] = {
    "learning": pers_pb.LEARNING_MODE_LEARNING,
    "paused": pers_pb.LEARNING_MODE_PAUSED,
    "local-only": pers_pb.LEARNING_MODE_LOCAL_ONLY,
}
TIMEOUT: Final = 3.0


class LearningModeSync:
    """Sends the hub's learning mode to the personalization service; one send at a time,
    each the mode of ``settings`` when it is sent (a change is never overtaken by an
    older mode)."""

    def __init__(
        self,
        settings: Settings,
        personalization: pers_grpc.PersonalizationServiceAsyncStub | None,
    ) -> None:
        self.settings = settings
        self.personalization = personalization
        # The mode the service last acknowledged (None: not since it last failed).
        self.acknowledged: str | None = None
        self._lock = asyncio.Lock()

    async def sync(self) -> bool:
        """Send the settings' mode; True once the service holds it."""
        if self.personalization is None:
            return False
        async with self._lock:
            mode = self.settings.learning_mode
            try:
                await self.personalization.SetLearningMode(
                    pers_pb.SetLearningModeRequest(mode=MODES[mode]), timeout=TIMEOUT
                )
            except grpc.aio.AioRpcError as e:
                if self.acknowledged is not None:
                    log.warning(
                        "learning mode %s not sent (retried at the next poll): %s",
                        mode,
                        peer_error(e, "personalization", "SetLearningMode"),
                    )
                self.acknowledged = None
                return False
            if self.acknowledged != mode:
                log.info("learning mode %s now enforced by the personalization service", mode)
            self.acknowledged = mode
            return True
