"""hub.mqtt.incoming against a real mosquitto: every message in order, as
``client.messages`` gives them; the messages received before a drop are handed out,
then MqttError; and it does not busy-loop while waiting."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import aiomqtt
import pytest

from hub import mqtt
from tests.support.broker import start_mosquitto
from tests.support.waiting import wait_until_async


async def _publish(host: str, port: int, n: int, topic: str = "t/x") -> None:
    async with mqtt.client(host, port, identifier="pub") as pub:
        for i in range(n):
            await pub.publish(topic, str(i).encode(), qos=1)


async def test_every_message_in_order_then_an_error_when_the_broker_goes(
    tmp_path: Path,
) -> None:
    with start_mosquitto(tmp_path) as (host, port, proc):
        async with mqtt.client(host, port, identifier="sub") as sub:
            await sub.subscribe("t/#", qos=1)
            await _publish(host, port, 500)
            got: list[int] = []
            messages = mqtt.incoming(sub)
            async with asyncio.timeout(20):
                async for m in messages:
                    assert isinstance(m.payload, bytes)
                    got.append(int(m.payload))
                    if len(got) == 500:
                        break
            assert got == list(range(500))
            # The broker dies while the reader waits: the wait ends with MqttError.
            reader = mqtt.incoming(sub)
            waiting = asyncio.ensure_future(reader.__anext__())
            await asyncio.sleep(0.2)  # the reader is parked in queue.get() (not a sync)
            assert not waiting.done()
            proc.kill()
            with pytest.raises(aiomqtt.MqttError):
                async with asyncio.timeout(20):
                    await waiting


async def test_messages_received_before_the_drop_come_first(tmp_path: Path) -> None:
    with start_mosquitto(tmp_path) as (host, port, proc):
        async with mqtt.client(host, port, identifier="sub2") as sub:
            await sub.subscribe("t/#", qos=1)
            await _publish(host, port, 50)
            await wait_until_async(lambda: len(sub.messages) == 50, 20, "50 messages queued")
            proc.kill()
            await wait_until_async(sub._disconnected.done, 20, "the client to see the drop")
            got: list[int] = []

            async def read_all() -> None:
                async for m in mqtt.incoming(sub):
                    assert isinstance(m.payload, bytes)
                    got.append(int(m.payload))

            with pytest.raises(aiomqtt.MqttError):
                await read_all()
            assert got == list(range(50))


async def test_waiting_costs_no_cpu(tmp_path: Path) -> None:
    with start_mosquitto(tmp_path) as (host, port, _proc):
        async with mqtt.client(host, port, identifier="sub3") as sub:
            await sub.subscribe("t/#", qos=1)
            reader = asyncio.ensure_future(mqtt.incoming(sub).__anext__())
            # This thread's CPU (the event loop's: aiomqtt and the reader run on it), not the
            # process's: other tests' leftover threads in a full run are not ours to count.
            cpu = time.thread_time()
            await asyncio.sleep(1.0)  # the measurement window
            assert time.thread_time() - cpu < 0.2
            assert not reader.done()
            reader.cancel()


def test_a_socket_closed_before_its_registration_leaves_no_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """aiomqtt registers its socket through call_soon_threadsafe; when the connection
    dropped just then, add_writer meets a closed descriptor. That is logged at DEBUG;
    any other callback error still reaches asyncio's handler."""
    loop = asyncio.new_event_loop()
    try:
        mqtt.quiet_socket_races(loop)
        a, b = socket.socketpair()
        fd = a.fileno()
        a.close()
        b.close()
        with caplog.at_level("DEBUG"):
            loop.call_soon(loop.add_writer, fd, lambda: None)
            loop.call_soon(loop.add_reader, -1, lambda: None)
            loop.call_soon(lambda: 1 / 0)
            loop.run_until_complete(asyncio.sleep(0.01))
    finally:
        loop.close()
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1  # the ZeroDivisionError, as before
    assert "ZeroDivisionError" in str(errors[0].exc_info)
    assert [r.getMessage() for r in caplog.records if r.levelname == "DEBUG"].count(
        "MQTT: the socket closed before it was registered (reconnecting)"
    ) == 2
