"""Home Assistant discovery of the Roost hub's entities: one retained config per entity.

Every entity has its own retained discovery config (:func:`topics.discovery_topic`), each
with the same device block. A new area publishes only its own entities (about 1 KB each),
never the whole device again, so the bytes published grow linearly with the number of
entities. Only what the broker may lack is published: a new entity, or every entity once per
MQTT session (a fresh broker has forgotten its retained messages).

The number of entities is capped (``max_entities``, the hub's ``ha_max_entities``): past the
cap a new (model, area) gets no entity; its decisions are still made, recorded and
published (the bridge counts them).

Migration from earlier versions, which published every entity in ONE device-based config
(:func:`topics.legacy_discovery_topic`): after subscribing, each session sends itself a
marker on :func:`topics.sync_topic`. When it comes back, the broker has delivered a retained
legacy config if there is one. If there was, the bridge publishes ``MIGRATE_PAYLOAD`` there
(Home Assistant unloads those entities but keeps their entity ids), clears the topic, and
only then announces the per-entity configs (which take over the same unique ids).
Otherwise it announces them at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Callable
from enum import Enum
from typing import Any

import aiomqtt

from hub.homeassistant.entities import MIGRATE_PAYLOAD, entity_config
from hub.homeassistant.metrics import HA_ENTITIES
from hub.homeassistant.topics import discovery_topic, legacy_discovery_topic, sync_topic

log = logging.getLogger(__name__)


class Step(Enum):
    """What the bridge does after a discovery message of its own session came back."""

    ANNOUNCE = "announce"  # publish the due configs
    MIGRATE = "migrate"  # clear the legacy config first, then announce


class Discovery:
    """The hub's entities and which of their configs the broker still needs."""

    def __init__(self, prefix: str, hub_id: str, max_entities: int) -> None:
        if max_entities < 1:
            raise ValueError("max_entities must be >= 1")
        self.prefix = prefix
        self.hub_id = hub_id
        self.max_entities = max_entities
        self.components: dict[str, dict[str, Any]] = {}
        self.legacy_topic = legacy_discovery_topic(prefix, hub_id)
        self.sync_topic = sync_topic(hub_id)
        # Keys whose config the broker may lack, in order (a dict as an ordered set).
        self._due: dict[str, None] = {}
        self._token = b""
        self._legacy_seen = False
        # Configs go out only once the session knows there is no legacy config (left).
        self.ready = False

    # ------------------------------------------------------------ entities

    def fits(self, count: int) -> bool:
        """Whether ``count`` more entities stay within the cap."""
        return len(self.components) + count <= self.max_entities

    def add(self, key: str, component: dict[str, Any]) -> None:
        self.components[key] = component
        self._due[key] = None
        HA_ENTITIES.set(len(self.components))

    def message(self, key: str) -> tuple[str, bytes]:
        """The retained discovery message of one entity."""
        platform, config = entity_config(self.hub_id, self.components[key])
        topic = discovery_topic(self.prefix, platform, self.hub_id, key)
        return topic, json.dumps(config, separators=(",", ":")).encode()

    def next_due(self) -> str | None:
        """The next entity whose config to publish (None: none, or not ready yet)."""
        return next(iter(self._due), None) if self.ready else None

    def sent(self, key: str) -> None:
        self._due.pop(key, None)

    async def publish_due(self, client: aiomqtt.Client, current: Callable[[], bool]) -> None:
        """Publish the due configs while ``client`` is the ``current`` session's."""
        while current() and (key := self.next_due()) is not None:
            topic, payload = self.message(key)
            await client.publish(topic, payload, qos=1, retain=True)
            if current():  # else a new session made it due again
                self.sent(key)

    # ------------------------------------------------------------ sessions

    async def start_session(self, client: aiomqtt.Client) -> None:
        """Subscribe to the legacy and sync topics, then send the marker."""
        marker = self.new_session()
        await client.subscribe(self.legacy_topic, qos=1)
        await client.subscribe(self.sync_topic, qos=1)
        await client.publish(self.sync_topic, marker, qos=1)

    def new_session(self) -> bytes:
        """A new MQTT session: every config is due again, after the legacy check. Returns
        the marker to send to :attr:`sync_topic` once subscribed to it and the legacy topic."""
        self._due = dict.fromkeys(self.components)
        self._token = secrets.token_hex(8).encode()
        self._legacy_seen = False
        self.ready = False
        return self._token

    def on_message(self, topic: str, payload: bytes) -> Step | None:
        """A message on the legacy or the sync topic; the step to take, if any."""
        if self.ready:
            return None  # e.g. the migration's own messages
        if topic == self.legacy_topic:
            self._legacy_seen = self._legacy_seen or bool(payload)
            return None
        if topic != self.sync_topic or not self._token or payload != self._token:
            return None
        self._token = b""  # once per session, even if the broker sends it twice
        if self._legacy_seen:
            return Step.MIGRATE
        self.ready = True
        return Step.ANNOUNCE

    async def migrate(self, client: aiomqtt.Client, settle_seconds: float) -> bool:
        """Retire the legacy config; then the per-entity configs may go out. False if the
        session ended first (the next one finds the legacy config again)."""
        try:
            await client.publish(self.legacy_topic, MIGRATE_PAYLOAD, qos=1, retain=True)
            # Home Assistant unloads the old entities (keeping their ids) before the topic
            # is cleared, or it would remove them and their ids.
            await asyncio.sleep(settle_seconds)
            await client.publish(self.legacy_topic, b"", qos=1, retain=True)
        except aiomqtt.MqttError:
            return False
        log.info("Home Assistant: moved the Roost hub from one discovery config to one per entity")
        self.ready = True
        return True
