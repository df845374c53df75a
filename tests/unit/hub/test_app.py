"""The hub's MQTT loop: a message that makes the hub crash is named by its topic (never
its payload) in the log, where `roost run`'s crash report finds it."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import aiomqtt
import pytest

from cli.supervisor import crash_topic
from hub.app import Hub
from hub.config import HubConfig
from hub.intake import Intake
from services.kit.certs import ensure_certs
from services.kit.process import LOG_FORMAT

TOPIC = "roost/readings/attic/temperature"
PAYLOAD = b'{"value": 98765.4321}'


class Poisoned:
    """An ingest that a message makes crash (a bug the parser did not catch)."""

    def handle(self, topic: str, data: bytes, **_: object) -> int:
        raise OverflowError("int too large to convert to float")


class OneMessage:
    """A client with one message received (what ``hub.mqtt.incoming`` reads)."""

    def __init__(self, retain: bool) -> None:
        self._queue: asyncio.Queue[aiomqtt.Message] = asyncio.Queue()
        self._queue.put_nowait(
            aiomqtt.Message(TOPIC, PAYLOAD, qos=0, retain=retain, mid=1, properties=None)
        )
        self._disconnected: asyncio.Future[None] = asyncio.get_running_loop().create_future()


@pytest.mark.parametrize("retain", [True, False])
async def test_a_crash_names_the_topic_not_the_payload(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, retain: bool
) -> None:
    ensure_certs(tmp_path / "certs")
    hub = Hub(HubConfig(certs_dir=tmp_path / "certs", data_dir=tmp_path / "hub"))
    hub.intake = Intake(Poisoned(), None)  # type: ignore[arg-type]
    acked: list[aiomqtt.Message] = []
    with caplog.at_level(logging.INFO), pytest.raises(OverflowError):
        await hub._consume(OneMessage(retain), acked.append)  # type: ignore[arg-type]
    # Acknowledged before handling: the broker does not send it into a crash loop again.
    assert [m.topic.value for m in acked] == [TOPIC]
    lines = [logging.Formatter(LOG_FORMAT).format(r) for r in caplog.records]
    crash = [line for line in lines if "CRITICAL" in line]
    assert len(crash) == 1
    assert TOPIC in crash[0]
    assert "98765" not in caplog.text  # the reading's value stays out of the log
    # `roost run` finds the topic in the log, and whether the broker will send it again.
    assert crash_topic("\n".join(lines)) == (TOPIC, retain)
