"""Warm the feature windows from Home Assistant's current states, so decisions resume at once.

``mqtt_statestream`` publishes a state only when it changes. After Roost restarts (or its
broker does, forgetting the retained states) the hub's windows would stay empty until every
input had changed again. On start and on every MQTT (re)connect, :class:`StateResume` reads
the current state of every mapped entity from HA's REST API (one ``GET /api/states``) and
feeds each to ingest as its statestream message would have been, validated the same way,
at HA's time (when HA last confirmed the state): each window that is then complete and
fresh decides within seconds, with no input changing.

* An entity whose statestream message arrived after the read began is left alone: that
  message is newer than what the API returned.
* A failed read is counted (``roost_hub_ha_resumes_total{outcome="failed"}``) and logged
  once until a read succeeds again; it never stops the hub (the windows then fill from
  statestream as inputs change).

Logs name counts and error types only, never an entity's state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from prometheus_client import Counter

from hub.homeassistant.client import HaClient, HaUnavailable
from hub.ingest import Ingest

log = logging.getLogger(__name__)

RESUMES = Counter(
    "roost_hub_ha_resumes_total",
    "Reads of Home Assistant's current states at start or reconnect, by outcome "
    "(ok, failed, nothing_mapped).",
    ["outcome"],
)
RESUME_STATES = Counter(
    "roost_hub_ha_resume_states_total",
    "States read from Home Assistant's API at start or reconnect: fed to the windows, or "
    "superseded (a newer statestream message had arrived).",
    ["outcome"],
)
for _outcome in ("ok", "failed", "nothing_mapped"):
    RESUMES.labels(_outcome)
for _outcome in ("fed", "superseded"):
    RESUME_STATES.labels(_outcome)


class StateResume:
    """Feeds HA's current states of the mapped entities to ``ingest``."""

    def __init__(
        self,
        client: HaClient,
        ingest: Ingest,
        *,
        timeout: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._ingest = ingest
        self._timeout = timeout
        self._clock = clock
        self._failing = False
        self._task: asyncio.Task[int] | None = None

    def start(self) -> None:
        """A new MQTT session: read and feed in the background; a read still running
        gives way to this one."""
        self.cancel()
        self._task = asyncio.create_task(self.once(), name="ha-resume")

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def once(self) -> int:
        """Read and feed the current states; how many were fed (0 if the read failed)."""
        entities = self._ingest.mapped_entities
        if not entities:
            RESUMES.labels("nothing_mapped").inc()
            return 0
        since = self._clock()
        try:
            states = await asyncio.wait_for(
                asyncio.to_thread(self._client.states, entities), self._timeout
            )
        except Exception as e:  # HaUnavailable, TimeoutError, or a bug: never stop the hub
            RESUMES.labels("failed").inc()
            if not self._failing:
                log.warning(
                    "cannot read the current states from Home Assistant (%s): decisions "
                    "resume as inputs change; see roost_hub_ha_resumes_total",
                    e if isinstance(e, HaUnavailable) else type(e).__name__,
                )
            self._failing = True
            return 0
        if self._failing:
            log.info("reading the current states from Home Assistant works again")
            self._failing = False
        fed = 0
        for entity_id, state, ts in sorted(states, key=lambda s: s[2]):
            if self._ingest.heard_since(entity_id, since):
                RESUME_STATES.labels("superseded").inc()
                continue
            self._ingest.handle_state(entity_id, state, ts)
            fed += 1
        RESUME_STATES.labels("fed").inc(fed)
        RESUMES.labels("ok").inc()
        log.info("resumed from Home Assistant: %d current states fed to the windows", fed)
        return fed
