"""The hub's ends on the broker (``hub.intake``): a reading is acknowledged only once the
journal holds it, a restarted hub decides what it had taken and refills its windows, and
decisions in flight when the session drops go out on the next session at once."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import REGISTRY

import hub.intake as intake_module
from hub.ingest import Ingest
from hub.intake import RESEND_SECONDS, Intake, Publisher
from hub.journal import Journal
from hub.pipeline import Outgoing, Pending
from models.features import spec_by_id
from tests.support.waiting import wait_until_async

KINDS = {"temperature": 21.0, "humidity": 30.0, "illuminance": 400.0, "carbon_dioxide": 600.0}


class Queue:
    """The pipeline's side: what ingest submits (and remembers, when replaying)."""

    def __init__(self) -> None:
        self.submitted: list[Pending] = []
        self.remembered: list[str] = []

    def submit(self, item: Pending) -> None:
        self.submitted.append(item)

    def remember(self, model: str, area: str, reading_id: str) -> None:
        self.remembered.append(reading_id)


def ingest(queue: Queue) -> Ingest:
    return Ingest(
        specs={"occupancy": spec_by_id("occupancy/v1")},
        pipeline=queue,
        max_payload_bytes=4096,
        statestream_base="hs",
        statestream_entities={},
    )


def reading(n: int) -> tuple[str, bytes]:
    kind = list(KINDS)[n % len(KINDS)]
    body = {"value": KINDS[kind], "ts": 1_423_058_400.0 + n, "id": f"r{n}"}
    return f"roost/readings/office/{kind}", json.dumps(body).encode()


async def test_a_reading_is_acknowledged_only_once_journaled(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite", history=100)
    intake = Intake(ingest(Queue()), journal)
    acked: list[int] = []
    intake.take(*reading(0), lambda: acked.append(0))
    assert acked == []  # not yet committed: the broker must keep it
    await wait_until_async(lambda: acked == [0], 5, "the acknowledgement after the commit")
    # Committed before it was acknowledged: another process sees it.
    assert [e.topic for e in Journal(tmp_path / "j.sqlite", history=100).entries()] == [
        reading(0)[0]
    ]


async def test_after_a_kill_the_undecided_are_decided_and_the_windows_refilled(
    tmp_path: Path,
) -> None:
    path = tmp_path / "j.sqlite"
    before = Queue()
    intake = Intake(ingest(before), Journal(path, history=100))
    for n in range(6):
        intake.take(*reading(n), lambda: None)
    intake.flush()
    # r3 completed the window; r3 and r4 are decided, r5 was still pending at the kill.
    assert [p.trigger_id for p in before.submitted] == ["r3", "r4", "r5"]
    intake.settled(before.submitted[:2])
    # kill -9: a new process, a new ingest with empty windows, the same journal file.
    after = Queue()
    again = Intake(ingest(after), Journal(path, history=100))
    assert again.replay() == (1, 5)
    assert [p.trigger_id for p in after.submitted] == ["r5"]  # decided again, once
    assert after.remembered == ["r3", "r4"]  # never again
    # The windows are full: the next reading decides at once.
    again.take(*reading(6), lambda: None)
    assert [p.trigger_id for p in after.submitted] == ["r5", "r6"]


class FakePaho:
    """paho's side of a session as ``hub.mqtt.publish_all`` uses it: PUBACKs come (on
    the next turn of the loop) only if ``acks`` is set."""

    def __init__(self, acks: bool) -> None:
        self.acks = acks
        self.sent: list[str] = []
        self.on_publish: Any = None
        self._mid = 0

    def publish(self, topic: str, payload: bytes, qos: int) -> SimpleNamespace:
        self._mid += 1
        mid = self._mid
        self.sent.append(topic)
        if self.acks:  # the broker acknowledges; a dead one never does
            asyncio.get_running_loop().call_soon(self.on_publish, self, None, mid, None, None)
        return SimpleNamespace(rc=0, mid=mid, is_published=lambda: False)


class FakeClient:
    """An aiomqtt client with a :class:`FakePaho` session."""

    def __init__(self, acks: bool) -> None:
        self._client = FakePaho(acks)
        self._disconnected: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def sent(self) -> list[str]:
        return self._client.sent


async def test_decisions_in_flight_when_the_session_drops_go_out_on_the_next_one() -> None:
    publisher = Publisher()
    dead, alive = FakeClient(acks=False), FakeClient(acks=True)
    publisher.attach(dead)  # type: ignore[arg-type]
    out: Sequence[Outgoing] = [Outgoing("d/1", b"{}"), Outgoing("d/2", b"{}")]
    task = asyncio.create_task(publisher(out))
    await wait_until_async(lambda: len(dead.sent) == 2, 5, "the publishes in flight")
    publisher.detach()
    publisher.attach(alive)  # type: ignore[arg-type]
    # Not after a PUBACK timeout (aiomqtt's default: 10 s): as soon as the session is back.
    await asyncio.wait_for(task, 2)
    assert alive.sent == ["d/1", "d/2"]


async def test_decisions_acknowledged_just_before_a_drop_are_published_again_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [100.0]
    # The publisher's clock only (the event loop keeps the real one).
    fake_time = SimpleNamespace(monotonic=lambda: clock[0], perf_counter=time.perf_counter)
    monkeypatch.setattr(intake_module, "time", fake_time)
    publisher = Publisher()
    first, second, third = FakeClient(True), FakeClient(True), FakeClient(True)
    publisher.attach(first)  # type: ignore[arg-type]
    await publisher([Outgoing("d/old", b"{}")])
    clock[0] += RESEND_SECONDS + 0.5
    await publisher([Outgoing("d/1", b"{}"), Outgoing("d/2", b"{}")])
    clock[0] += 0.5
    publisher.detach()  # the broker was killed: it may have lost d/1 and d/2
    publisher.detach()  # (the hub's MQTT loop detaches twice on a drop)
    assert await publisher.resend(second) == 2  # type: ignore[arg-type]
    assert second.sent == ["d/1", "d/2"]  # not d/old: saved by the broker long before
    publisher.attach(second)  # type: ignore[arg-type]
    await publisher([Outgoing("d/3", b"{}")])
    assert second.sent == ["d/1", "d/2", "d/3"]  # the resent ones first
    # A drop right after: what the new session acknowledged, the resent ones included.
    publisher.detach()
    assert await publisher.resend(third) == 3  # type: ignore[arg-type]
    assert third.sent == ["d/1", "d/2", "d/3"]


async def test_a_failing_journal_costs_durability_not_readings(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite", history=100)
    queue = Queue()
    intake = Intake(ingest(queue), journal)
    journal._db.close()  # every write now fails (a full or vanished disk)
    acked: list[int] = []
    for n in range(4):
        intake.take(*reading(n), lambda n=n: acked.append(n))  # type: ignore[misc]
    # Handled and acknowledged as taken (what the hub did without a journal).
    assert acked == [0, 1, 2, 3]
    assert [p.trigger_id for p in queue.submitted] == ["r3"]
    assert REGISTRY.get_sample_value("roost_hub_journal_errors_total") >= 4


async def test_a_replayed_reading_is_not_counted_twice(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    intake = Intake(ingest(Queue()), Journal(path, history=100))

    def counted() -> tuple[float, float]:
        bad = REGISTRY.get_sample_value("roost_hub_readings_dropped_total", {"reason": "bad_json"})
        return bad or 0.0, REGISTRY.get_sample_value("roost_hub_readings_total") or 0.0

    before = counted()
    intake.take("roost/readings/office/temperature", b"{not json", lambda: None)
    intake.take(*reading(0), lambda: None)
    intake.flush()
    assert counted() == (before[0] + 1, before[1] + 1)
    Intake(ingest(Queue()), Journal(path, history=100)).replay()  # the restarted hub
    assert counted() == (before[0] + 1, before[1] + 1)


def _intake_stage_count() -> float:
    value = REGISTRY.get_sample_value("roost_hub_stage_seconds_count", {"stage": "intake"})
    return value or 0.0


async def test_every_reading_taken_is_timed_in_the_intake_stage(tmp_path: Path) -> None:
    """Journaled or not (a broken journal), valid or dropped: each reading taken once."""
    before = _intake_stage_count()
    journaled = Intake(ingest(Queue()), Journal(tmp_path / "j.sqlite", history=100))
    unjournaled = Intake(ingest(Queue()), None)
    for n in range(5):
        journaled.take(*reading(n), lambda: None)
        unjournaled.take(*reading(n), lambda: None)
    journaled.take("roost/readings/office/temperature", b"not json", lambda: None)
    assert _intake_stage_count() - before == 11
    journaled.flush()
    journaled.close()
