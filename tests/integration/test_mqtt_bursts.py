"""``hub.mqtt`` against a real mosquitto in bursts, as a restarted hub meets them: a queued
backlog read through :class:`hub.mqtt.BufferedSocket`, thousands of decisions published
at once through :func:`hub.mqtt.publish_all` (every one confirmed, in order), aiomqtt's
own publishes on the same client still confirmed, and a broker that dies mid-burst
turns the waits into errors instead of hangs. Over TLS: tests/integration/test_k3s_broker.py."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from subprocess import Popen

import aiomqtt
import pytest

from hub import mqtt
from tests.support.broker import start_mosquitto
from tests.support.stacks import require_mosquitto

pytestmark = pytest.mark.integration

N = 5_000


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[tuple[str, int, Popen[bytes]]]:
    require_mosquitto()
    with start_mosquitto(tmp_path) as (host, port, proc):
        yield host, port, proc


def messages(n: int, prefix: str = "r") -> list[tuple[str, bytes]]:
    return [(f"{prefix}/{i % 16}", f'{{"seq": {i}}}'.encode()) for i in range(n)]


async def test_a_queued_backlog_is_read_whole_and_in_order(
    broker: tuple[str, int, Popen[bytes]],
) -> None:
    host, port, _ = broker
    async with mqtt.client(host, port, identifier="hub", clean_session=False) as c:
        await c.subscribe("r/#", qos=1)
    async with mqtt.client(host, port, max_inflight_messages=0) as p:
        assert await mqtt.publish_all(p, messages(N)) == [None] * N
    got: list[bytes] = []
    async with mqtt.client(host, port, identifier="hub", clean_session=False) as c:
        assert isinstance(c._client._sock, mqtt.BufferedSocket)
        async with asyncio.timeout(60):
            async for m in mqtt.incoming(c):
                got.append(m.payload)  # type: ignore[arg-type]
                if len(got) == N:
                    break
    assert got == [p for _, p in messages(N)]


async def test_a_burst_of_publishes_is_confirmed_and_arrives_in_order(
    broker: tuple[str, int, Popen[bytes]],
) -> None:
    host, port, _ = broker
    got: list[bytes] = []
    async with (
        mqtt.client(host, port) as sub,
        mqtt.client(host, port, max_inflight_messages=0) as pub,
    ):
        await sub.subscribe("d/#", qos=1)
        sent = messages(N, "d")
        results, _ = await asyncio.gather(
            mqtt.publish_all(pub, sent),
            pub.publish("status", b"online", qos=1),  # aiomqtt's, on the same client
        )
        assert results == [None] * N
        async with asyncio.timeout(60):
            async for m in mqtt.incoming(sub):
                got.append(m.payload)  # type: ignore[arg-type]
                if len(got) == N:
                    break
        # A second burst on the same client: the confirmations were not used up.
        assert await mqtt.publish_all(pub, sent[:10]) == [None] * 10
    assert got == [p for _, p in sent]


async def test_a_broker_dying_mid_burst_fails_the_waits(
    broker: tuple[str, int, Popen[bytes]],
) -> None:
    host, port, proc = broker
    failed: list[BaseException] = []

    async def burst_then_kill() -> None:
        async with mqtt.client(host, port, max_inflight_messages=0) as pub:
            burst = asyncio.ensure_future(mqtt.publish_all(pub, messages(50_000, "d")))
            await asyncio.sleep(0)
            proc.kill()
            async with asyncio.timeout(30):  # each wait ends: confirmed or failed
                results = await burst
            failed.extend(r for r in results if r is not None)
            await mqtt.incoming(pub).__anext__()  # the drop, as the hub's reader sees it

    with pytest.raises(aiomqtt.MqttError):  # the session ends with the broker
        await burst_then_kill()
    assert failed, "a killed broker confirmed everything"
    assert all(isinstance(r, aiomqtt.MqttError) for r in failed)
