"""Removing the Roost hub from Home Assistant (``roost ha uninstall``).

Every retained topic the hub made is cleared, whatever areas it announced: the broker's
retained messages are the list. :func:`retained_messages` subscribes to the hub's entity
configs, the single device config of earlier versions and ``roost/<hub_id>/ha/#`` (states,
availability), sends itself a marker and collects what arrives retained before the marker.
:func:`uninstall` clears the discovery configs first (Home Assistant removes each entity,
and the device with the last one), waits, then clears the states: clearing an entity's
state topic before it is gone makes Home Assistant log "Erroneous JSON".
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import aiomqtt

from hub.homeassistant.topics import (
    discovery_filter,
    ha_filter,
    legacy_discovery_topic,
    sync_topic,
)

# How long the marker may take to come back (the broker is local: milliseconds).
MARKER_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class Removed:
    """The retained topics cleared: discovery configs, then states."""

    configs: tuple[str, ...]
    states: tuple[str, ...]


async def retained_messages(
    client: aiomqtt.Client,
    filters: Sequence[str],
    marker_topic: str,
) -> dict[str, bytes]:
    """The retained messages matching ``filters`` (topic -> payload), in arrival order.

    ``marker_topic`` must match one of the filters: the broker delivers the marker after
    the retained messages of the earlier subscriptions."""
    for topic_filter in filters:
        await client.subscribe(topic_filter, qos=1)
    marker = secrets.token_hex(8).encode()
    await client.publish(marker_topic, marker, qos=1)
    found: dict[str, bytes] = {}
    async with asyncio.timeout(MARKER_TIMEOUT_SECONDS):
        async for message in client.messages:
            topic = message.topic.value
            if topic == marker_topic and message.payload == marker:
                break
            if message.retain and isinstance(message.payload, bytes) and message.payload:
                found[topic] = message.payload
    return found


async def uninstall(
    client: aiomqtt.Client, prefix: str, hub_id: str, wait_seconds: float
) -> Removed:
    """Clear the hub's discovery configs (Home Assistant drops its entities and device),
    wait ``wait_seconds``, then clear its retained states."""
    configs = (discovery_filter(prefix, hub_id), legacy_discovery_topic(prefix, hub_id))
    topics = list(
        await retained_messages(client, [*configs, ha_filter(hub_id)], sync_topic(hub_id))
    )
    removed = Removed(
        configs=tuple(t for t in topics if any(aiomqtt.Topic(t).matches(f) for f in configs)),
        states=tuple(t for t in topics if not any(aiomqtt.Topic(t).matches(f) for f in configs)),
    )
    for topic in removed.configs:
        await client.publish(topic, b"", qos=1, retain=True)
    if removed.configs and removed.states:
        await asyncio.sleep(wait_seconds)
    for topic in removed.states:
        await client.publish(topic, b"", qos=1, retain=True)
    return removed
