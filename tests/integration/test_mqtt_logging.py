"""``hub.mqtt`` clients against a real mosquitto: quiet on the normal path, a real backlog
still reported, at most once a minute."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub import mqtt
from services.kit.ratelog import RateLimitedLog
from tests.support.broker import start_mosquitto
from tests.support.stacks import require_mosquitto

pytestmark = pytest.mark.integration

# The hub's in-flight window and a batch of decisions it publishes at once (max_batch).
HUB_INFLIGHT = 1000
BATCH = 512


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[tuple[str, int]]:
    require_mosquitto()
    with start_mosquitto(tmp_path) as (host, port, _):
        yield host, port


@pytest.fixture(autouse=True)
def fresh_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """The clients' rate-limited logs start afresh (another test may have logged)."""
    fresh = mqtt.RateLimitFilter(
        RateLimitedLog(mqtt.log, logging.WARNING), RateLimitedLog(mqtt.log, logging.ERROR)
    )
    monkeypatch.setattr(mqtt.CLIENT_LOG, "filters", [fresh])


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


async def test_a_batch_within_the_inflight_window_logs_nothing(
    broker: tuple[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    host, port = broker
    with caplog.at_level(logging.INFO):
        async with mqtt.client(host, port, max_inflight_messages=HUB_INFLIGHT) as client:
            for batch in range(4):
                await asyncio.gather(
                    *(client.publish(f"t/{batch}", b"1", qos=1) for _ in range(BATCH))
                )
    assert warnings(caplog) == []


async def test_a_real_backlog_is_reported_once_a_minute(
    broker: tuple[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    host, port = broker
    with caplog.at_level(logging.INFO):
        # paho's window of 20: most of each batch waits in the client.
        async with mqtt.client(host, port) as client:
            for batch in range(4):
                await asyncio.gather(
                    *(client.publish(f"t/{batch}", b"1", qos=1) for _ in range(BATCH))
                )
    lines = warnings(caplog)
    assert len(lines) == 1, lines
    assert "pending publish calls" in lines[0]
