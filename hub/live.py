"""The live session of a restarted hub (:mod:`hub.catchup`): a clean MQTT session on
the reading topics, read until the persistent session caught up with it.

It connects with its own client id (``roost-hub-<hub_id>-live``, ``clean_session``),
subscribes to the readings and the statestream, publishes a fresh marker and, once the
marker came back, hands each reading to :meth:`hub.intake.Intake.take_live`. Readings
before the marker, and retained ones, are the persistent session's to decide. It stops
when the intake says the persistent session caught up, when the hub stops, or when the
connection drops (then the persistent session decides everything, as without it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiomqtt

from hub import mqtt
from hub.catchup import marker_topic, new_marker
from hub.config import HubConfig
from hub.intake import Intake
from hub.topics import READINGS_FILTER, statestream_filter

log = logging.getLogger(__name__)


async def run_live_session(cfg: HubConfig, intake: Intake, stop: asyncio.Event) -> None:
    """Decide fresh readings at once while the persistent session reads its backlog."""
    if not intake.catching_up:
        return
    caught_up = asyncio.Event()
    intake.on_live_closed = caught_up.set
    topic = marker_topic(cfg.hub_id)
    marker = new_marker()
    try:
        client = mqtt.client(
            cfg.mqtt_host,
            cfg.mqtt_port,
            identifier=f"roost-hub-{cfg.hub_id}-live",
            clean_session=True,
            keepalive=cfg.mqtt_keepalive_seconds,
            max_inflight_messages=0,  # no window: hub.mqtt.publish_all
            **mqtt.broker_login(cfg.mqtt_username, cfg.mqtt_password_file, cfg.mqtt_tls_ca_file),
        )
        async with client:
            await client.subscribe(READINGS_FILTER, qos=1)
            await client.subscribe(statestream_filter(cfg.statestream_base), qos=1)
            await client.subscribe(topic, qos=1)
            segment = intake.start_live(marker)
            if segment is None:
                return
            await client.publish(topic, marker.encode(), qos=1)
            reader = asyncio.create_task(_read(client, intake, topic, marker), name="mqtt-live")
            waits = [asyncio.create_task(e.wait()) for e in (caught_up, stop)]
            try:
                await asyncio.wait({reader, *waits}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in (reader, *waits):
                    t.cancel()
                    with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                        await t
            log.info("live session closed (%s)", "caught up" if caught_up.is_set() else "stop")
    except aiomqtt.MqttError as e:
        log.warning("live session ended (%s): the persistent session decides the rest", e)
    finally:
        intake.close_live()


async def _read(client: aiomqtt.Client, intake: Intake, topic: str, marker: str) -> None:
    started = False
    async for message in mqtt.incoming(client):
        name = message.topic.value
        payload = message.payload
        data = payload if isinstance(payload, bytes) else str(payload).encode()
        if name == topic:
            started = started or data == marker.encode()
            continue
        if started and not message.retain:
            intake.take_live(name, data)
