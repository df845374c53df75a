"""``hub.mqtt.publish_all`` on a fake paho session: confirmed by PUBACK, and every wait
ends with an error when the session drops — also on a client reused for a second
session (aiomqtt gives each session a new disconnect future). The real broker is in
tests/integration/test_mqtt_bursts.py."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import aiomqtt

from hub import mqtt


class Paho:
    """Publishes and, if ``acks``, confirms each on the next turn of the loop."""

    def __init__(self) -> None:
        self.acks = True
        self.on_publish: Any = None
        self._mid = 0

    def publish(self, topic: str, payload: bytes, qos: int) -> SimpleNamespace:
        self._mid += 1
        mid = self._mid
        if self.acks:
            asyncio.get_running_loop().call_soon(self.on_publish, self, None, mid, None, None)
        return SimpleNamespace(rc=0, mid=mid, is_published=lambda: False)


class Client:
    def __init__(self) -> None:
        self._client = Paho()
        self._disconnected: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def new_session(self) -> None:
        self._disconnected = asyncio.get_running_loop().create_future()


async def test_confirmed_then_each_dropped_session_fails_its_waits() -> None:
    client = Client()
    c: Any = client
    assert await mqtt.publish_all(c, [("t", b"1"), ("t", b"2")]) == [None, None]
    for _session in range(2):
        client._client.acks = False  # the broker dies before confirming
        burst = asyncio.ensure_future(mqtt.publish_all(c, [("t", b"3")]))
        await asyncio.sleep(0)
        client._disconnected.set_exception(aiomqtt.MqttError("gone"))
        results = await asyncio.wait_for(burst, 1)
        assert isinstance(results[0], aiomqtt.MqttError)
        client.new_session()  # the same client connects again
        client._client.acks = True
        assert await mqtt.publish_all(c, [("t", b"4")]) == [None]
