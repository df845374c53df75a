"""Messages to the owner in Home Assistant, through its REST API (the hub's HA client).

* A failed button or install (roll back, learn now, install, "was wrong") raises a
  **persistent notification** with the reason: one per action and model
  (``notification_id`` ``roost_<hub_id>_<key>``), so a repeated failure replaces it
  rather than piling up, and a later success dismisses it.
* A recorded correction is confirmed in the **logbook** (``logbook.log``).

The reason is the translated peer error (service, method, status code; never a peer's
details, which may quote household values). Without ``ha_url``/token the hub log is the
only place (counted ``unconfigured``). A failed call to HA is counted and logged at most
once a minute; it never stops the hub.
"""

from __future__ import annotations

import asyncio
import logging

from hub.homeassistant.client import HaClient, HaUnavailable
from hub.homeassistant.metrics import HA_NOTICES
from services.kit.ratelog import RateLimitedLog

log = logging.getLogger(__name__)

LOGBOOK_NAME = "Roost hub"


class Notices:
    """Persistent notifications and logbook entries of hub ``hub_id`` in HA."""

    def __init__(self, client: HaClient | None, hub_id: str) -> None:
        self._client = client
        self._hub_id = hub_id
        self._limited = RateLimitedLog(log)
        # Notifications raised and not dismissed since (by this process).
        self._raised: set[str] = set()

    def notification_id(self, key: str) -> str:
        return f"roost_{self._hub_id}_{key}"

    async def report(self, key: str, what: str, why: str | None) -> None:
        """The outcome of the owner's action ``what``: a notification with the reason if
        it failed; if it succeeded, the notification of an earlier failure is dismissed."""
        if why is not None:
            self._raised.add(key)
            await self.notify(key, f"Roost: {what} failed", f"{what} failed: {why}.")
        elif key in self._raised:
            self._raised.discard(key)
            await self.dismiss(key)

    async def notify(self, key: str, title: str, message: str) -> None:
        """Raise (or replace) the notification ``key``."""
        await self._call(
            "notification",
            "persistent_notification",
            "create",
            {"notification_id": self.notification_id(key), "title": title, "message": message},
        )

    async def dismiss(self, key: str) -> None:
        """Dismiss the notification ``key`` (the action succeeded since)."""
        await self._call(
            "notification",
            "persistent_notification",
            "dismiss",
            {"notification_id": self.notification_id(key)},
        )

    async def logbook(self, message: str) -> None:
        await self._call("logbook", "logbook", "log", {"name": LOGBOOK_NAME, "message": message})

    async def _call(self, kind: str, domain: str, service: str, data: dict[str, str]) -> None:
        client = self._client
        if client is None:
            HA_NOTICES.labels(kind, "unconfigured").inc()
            return
        try:
            await asyncio.to_thread(client.call, domain, service, data)
        except HaUnavailable as e:
            HA_NOTICES.labels(kind, "failed").inc()
            self._limited(kind, "Home Assistant %s not shown: %s", kind, e)
            return
        HA_NOTICES.labels(kind, "sent").inc()
