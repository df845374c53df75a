"""Resume at once: Home Assistant's current states warm the windows on (re)connect.

A fake HA API here (the real one: ``tests/integration/test_home_assistant_resume.py``):
the states are fed at HA's time through the statestream validation, only the mapped
entities, never over a newer statestream message, and a failing API is counted, logged
once and never raised. ``HaClient.states`` is run against a local HTTP server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from hub.homeassistant.client import HaClient, HaUnavailable
from hub.homeassistant.resume import RESUME_STATES, RESUMES, StateResume
from hub.ingest import Ingest, SensorRef
from hub.payloads import DROPPED, DropReason
from hub.pipeline import Pending
from models.features import OCCUPANCY_V1

BASE = "homeassistant_statestream"
KINDS = {"temperature": "21.5", "humidity": "40", "illuminance": "300", "carbon_dioxide": "800"}
MAPPING = {f"sensor.kitchen_{k}": SensorRef("kitchen", k) for k in KINDS}


class Collect:
    def __init__(self) -> None:
        self.items: list[Pending] = []

    def submit(self, item: Pending) -> None:
        self.items.append(item)

    def remember(self, model: str, area: str, reading_id: str) -> None:
        pass


class FakeHa:
    """``states()`` returns ``rows`` (or raises ``error``); records what was asked."""

    def __init__(self, rows: list[tuple[str, str, float]], error: Exception | None = None) -> None:
        self.rows = rows
        self.error = error
        self.asked: list[frozenset[str]] = []
        self.before_return: Any = None

    def states(self, entity_ids: Iterable[str]) -> list[tuple[str, str, float]]:
        self.asked.append(frozenset(entity_ids))
        if self.before_return is not None:
            self.before_return()
        if self.error is not None:
            raise self.error
        return [r for r in self.rows if r[0] in entity_ids]


def make(mapping: dict[str, SensorRef] = MAPPING) -> tuple[Ingest, Collect]:
    sink = Collect()
    ingest = Ingest(
        specs={"occupancy": OCCUPANCY_V1},
        pipeline=sink,
        max_payload_bytes=256,
        statestream_base=BASE,
        statestream_entities=mapping,
    )
    return ingest, sink


def resume(ha: FakeHa, ingest: Ingest) -> StateResume:
    return StateResume(ha, ingest, timeout=5)  # type: ignore[arg-type]


def counter(c: Any, label: str) -> float:
    return float(c.labels(label)._value.get())


def room(ts: float, **override: str) -> list[tuple[str, str, float]]:
    return [
        (f"sensor.kitchen_{k}", override.get(k, v), ts + i)
        for i, (k, v) in enumerate(KINDS.items())
    ]


async def test_current_states_decide_at_home_assistants_time() -> None:
    ingest, sink = make()
    t = time.time() - 120  # set two minutes ago; nothing changed since
    ha = FakeHa([*room(t), ("sensor.unmapped", "3", t), ("light.kitchen", "on", t)])
    fed = await resume(ha, ingest).once()
    assert fed == 4
    assert ha.asked == [frozenset(MAPPING)]  # only the mapped entities are wanted
    # The window is complete with the last state fed: one decision, at HA's time.
    assert len(sink.items) == 1
    assert sink.items[0].reading_ts == t + 3
    assert sink.items[0].area == "kitchen"
    assert sink.items[0].features[:4].tolist() == [21.5, 40.0, 300.0, 800.0]


async def test_states_are_validated_like_statestream_messages() -> None:
    ingest, sink = make()
    t = time.time() - 60
    before = {r: DROPPED.labels(r.value)._value.get() for r in DropReason}
    rows = [
        *room(t, carbon_dioxide="unavailable"),  # no value: dropped quietly
        ("sensor.kitchen_humidity", "1e40", t + 10),  # beyond float32
        ("sensor.kitchen_temperature", "900", t + 11),  # outside the plausible range
        ("sensor.kitchen_illuminance", "12", time.time() + 3 * 86_400),  # from the future
        ("sensor.kitchen_illuminance", "12", 0.0),  # 1970
    ]
    await resume(FakeHa(rows), ingest).once()
    dropped = {r.value: DROPPED.labels(r.value)._value.get() - before[r] for r in DropReason}
    assert dropped["unavailable"] == 1
    assert dropped["not_finite"] == 1
    assert dropped["out_of_range"] == 1
    assert dropped["bad_timestamp"] == 2
    assert sink.items == []  # co2 never had a value: no decision


async def test_a_newer_statestream_message_is_never_overwritten() -> None:
    """The statestream message that arrives while the API is read is newer than what the
    API returned: the API's state of that entity is left out."""
    ingest, sink = make()
    t = time.time() - 60
    ha = FakeHa(room(t))
    ha.before_return = lambda: ingest.handle(f"{BASE}/sensor/kitchen_temperature/state", b"25.0")
    superseded = counter(RESUME_STATES, "superseded")
    assert await resume(ha, ingest).once() == 3
    assert counter(RESUME_STATES, "superseded") == superseded + 1
    assert sink.items[-1].features[0] == pytest.approx(25.0)


async def test_a_failing_api_is_counted_every_time_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ingest, sink = make()
    ha = FakeHa(room(time.time()), error=HaUnavailable("cannot read the states: ConnectError"))
    r = resume(ha, ingest)
    failed = counter(RESUMES, "failed")
    with caplog.at_level(logging.INFO, logger="hub.homeassistant.resume"):
        for _ in range(5):
            assert await r.once() == 0
        ha.error = RuntimeError("a bug, 21.5 inside")  # not an HaUnavailable: still contained
        assert await r.once() == 0
    assert counter(RESUMES, "failed") == failed + 6
    warnings = [m for m in caplog.records if m.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "21.5" not in caplog.text
    assert sink.items == []
    # Back: logged once more, and the states are fed.
    ha.error = None
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="hub.homeassistant.resume"):
        assert await r.once() == 4
    assert "works again" in caplog.text
    assert len(sink.items) == 1


async def test_nothing_mapped_asks_nothing() -> None:
    ingest, _ = make({})
    ha = FakeHa(room(time.time()))
    assert await resume(ha, ingest).once() == 0
    assert ha.asked == []


# ------------------------------------------------------------------ HaClient.states


class _States(BaseHTTPRequestHandler):
    body: bytes = b"[]"

    def do_GET(self) -> None:
        assert self.path == "/api/states"
        assert self.headers["Authorization"] == "Bearer t0ken"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def http_states() -> Iterator[tuple[ThreadingHTTPServer, type[_States]]]:
    handler = type("Handler", (_States,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, handler
    finally:
        server.shutdown()
        server.server_close()


def test_client_states_take_the_latest_time_home_assistant_confirmed(
    http_states: tuple[ThreadingHTTPServer, type[_States]],
) -> None:
    server, handler = http_states
    handler.body = json.dumps(
        [
            {
                "entity_id": "sensor.a",
                "state": "21.5",
                "last_changed": "2026-01-01T10:00:00+00:00",
                "last_updated": "2026-01-01T10:05:00+00:00",
                "last_reported": "2026-01-01T10:09:00.5+00:00",
            },
            # No time HA sent: left out (never given the time of reading).
            {"entity_id": "sensor.b", "state": "1"},
            {"entity_id": "sensor.c", "state": "2", "last_changed": "not a time"},
            {"entity_id": "sensor.d", "state": "3", "last_changed": "2026-01-01T10:00:00"},
            {"entity_id": "sensor.e", "state": 4, "last_changed": "2026-01-01T10:00:00+00:00"},
            {
                "entity_id": "sensor.not_asked",
                "state": "5",
                "last_changed": "2026-01-01T10:00:00+00:00",
            },
            "garbage",
        ]
    ).encode()
    client = HaClient(f"http://127.0.0.1:{server.server_address[1]}", "t0ken", timeout=5)
    wanted = ["sensor.a", "sensor.b", "sensor.c", "sensor.d", "sensor.e"]
    assert client.states(wanted) == [("sensor.a", "21.5", 1767262140.5)]


def test_client_states_of_an_unreachable_home_assistant_raise_ha_unavailable() -> None:
    with pytest.raises(HaUnavailable, match="cannot read the states"):
        HaClient("http://127.0.0.1:9", "t0ken", timeout=2).states(["sensor.a"])


async def test_a_new_session_s_read_replaces_one_still_running() -> None:
    """Two reconnects in a row: the first read gives way, the states are fed once."""
    ingest, sink = make()
    ha = FakeHa(room(time.time() - 60))
    ha.before_return = lambda: time.sleep(0.3)  # a slow Home Assistant
    r = resume(ha, ingest)
    r.start()
    await asyncio.sleep(0)  # the first read is under way
    r.start()
    task = r._task
    assert task is not None
    await asyncio.wait_for(task, 5)
    assert task.result() == 4
    assert len(ha.asked) == 2
    assert len(sink.items) == 1  # one decision: the first read's states were not fed
    r.cancel()
