"""``roost simulate`` against a real mosquitto."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import aiomqtt
import pytest

from cli.household_stream import SENSOR_KINDS, synthetic_source
from cli.simulate import simulate
from cli.stack import free_port as stack_free_port
from hub.topics import READINGS_PREFIX, parse_reading_topic
from tests.support.broker import start_mosquitto
from tests.support.stacks import require_mosquitto
from tests.support.waiting import wait_until_async

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _mosquitto() -> None:
    require_mosquitto()


async def _collect(
    host: str, port: int, n: int, ready: asyncio.Event, wait_s: float = 20.0
) -> list[tuple[str, bytes]]:
    got: list[tuple[str, bytes]] = []
    async with aiomqtt.Client(hostname=host, port=port, identifier="roost-test-sub") as client:
        await client.subscribe(f"{READINGS_PREFIX}/#")
        ready.set()
        async with asyncio.timeout(wait_s):
            async for msg in client.messages:
                payload = msg.payload
                assert isinstance(payload, bytes)
                got.append((str(msg.topic), payload))
                if len(got) == n:
                    break
    return got


async def _simulate_and_collect(
    host: str, port: int, n: int, **kwargs: object
) -> tuple[int, list[tuple[str, bytes]]]:
    ready = asyncio.Event()
    sub = asyncio.create_task(_collect(host, port, n, ready))
    await asyncio.wait_for(ready.wait(), 10)
    sent = await simulate(host, port, progress=False, **kwargs)  # type: ignore[arg-type]
    return sent, await sub


def _check_schema(received: list[tuple[str, bytes]], areas: set[str]) -> list[dict[str, object]]:
    bodies = []
    for topic, payload in received:
        parsed = parse_reading_topic(topic)
        assert parsed is not None, topic
        assert parsed.area in areas
        assert parsed.sensor_kind in SENSOR_KINDS
        body = json.loads(payload)
        assert set(body) == {"value", "ts", "id"}
        assert isinstance(body["value"], float)
        assert isinstance(body["ts"], float)
        assert isinstance(body["id"], str)
        assert body["id"].startswith("sim-")
        bodies.append(body)
    assert len({b["id"] for b in bodies}) == len(bodies)  # ids are unique
    return bodies


async def test_all_messages_arrive_with_the_topic_schema(tmp_path: Path) -> None:
    with start_mosquitto(tmp_path) as (host, port, _proc):
        sent, received = await _simulate_and_collect(
            host, port, 40, speedup=0, limit=40, source=synthetic_source(seed=1)
        )
    assert sent == 40
    assert len(received) == 40
    _check_schema(received, {"office"})
    # Order is kept (one publisher, QoS 0, one connection): 10 rows of the 4 kinds.
    kinds = [topic.rsplit("/", 1)[1] for topic, _ in received]
    assert kinds == list(SENSOR_KINDS) * 10


async def test_several_areas_get_the_same_stream(tmp_path: Path) -> None:
    with start_mosquitto(tmp_path) as (host, port, _proc):
        sent, received = await _simulate_and_collect(
            host,
            port,
            24,
            speedup=0,
            limit=24,
            areas=["office", "kitchen", "hall"],
            source=synthetic_source(seed=2),
        )
    assert sent == 24
    _check_schema(received, {"office", "kitchen", "hall"})
    by_area: dict[str, list[tuple[str, float]]] = {}
    for topic, payload in received:
        area, kind = topic.split("/")[2:]
        by_area.setdefault(area, []).append((kind, json.loads(payload)["value"]))
    assert by_area["office"] == by_area["kitchen"] == by_area["hall"]
    assert len(by_area["office"]) == 8


async def test_source_end_stops_before_limit(tmp_path: Path) -> None:
    with start_mosquitto(tmp_path) as (host, port, _proc):
        sent, received = await _simulate_and_collect(
            host, port, 12, speedup=0, limit=1000, source=synthetic_source(seed=3, rows=3)
        )
    assert sent == 12
    assert len(received) == 12


async def test_paced_by_the_data_timestamps(tmp_path: Path) -> None:
    # 3 rows one minute apart at speed-up 300 (the pace itself: tests/unit/cli).
    with start_mosquitto(tmp_path) as (host, port, _proc):
        sent, received = await _simulate_and_collect(
            host, port, 12, speedup=300, source=synthetic_source(seed=4, rows=3)
        )
    assert sent == 12
    stamps = [json.loads(payload)["ts"] for _, payload in received]
    assert stamps == sorted(stamps)
    assert len(set(stamps)) == 3


async def _first_reading(client: aiomqtt.Client) -> None:
    """Until the (subscribed) client received a reading: the simulator is publishing."""
    await asyncio.wait_for(anext(aiter(client.messages)), 10)


async def test_reconnects_when_the_broker_restarts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="cli.simulate")
    port = stack_free_port()
    with start_mosquitto(tmp_path / "a", port) as (host, _port, _proc):
        async with aiomqtt.Client(hostname=host, port=port, identifier="roost-test-sub") as sub:
            await sub.subscribe(f"{READINGS_PREFIX}/#")
            # 20 rows, 1 minute apart at speed-up 600: ~0.1 s per row, ~2 s in all.
            task = asyncio.create_task(
                simulate(
                    host,
                    port,
                    speedup=600,
                    source=synthetic_source(seed=5, rows=20),
                    progress=False,
                    retry_backoff=0.2,
                )
            )
            await _first_reading(sub)
    # The broker is gone until the simulator noticed; it comes back on the same port.
    await wait_until_async(
        lambda: "broker connection failed" in caplog.text, 10, "the simulator to retry"
    )
    assert not task.done()
    with start_mosquitto(tmp_path / "b", port):
        sent = await asyncio.wait_for(task, 20)
    assert sent == 80


async def test_gives_up_after_retries_without_a_broker() -> None:
    with pytest.raises(aiomqtt.MqttError):
        await simulate(
            "127.0.0.1",
            stack_free_port(),
            speedup=0,
            source=synthetic_source(seed=6, rows=1),
            progress=False,
            max_retries=2,
            retry_backoff=0.05,
        )


async def test_cancellation_stops_cleanly(tmp_path: Path) -> None:
    with start_mosquitto(tmp_path) as (host, port, _proc):
        async with aiomqtt.Client(hostname=host, port=port, identifier="roost-test-sub") as sub:
            await sub.subscribe(f"{READINGS_PREFIX}/#")
            task = asyncio.create_task(
                simulate(host, port, speedup=60, source=synthetic_source(seed=7), progress=False)
            )
            await _first_reading(sub)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
