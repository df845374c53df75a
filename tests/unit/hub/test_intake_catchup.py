"""The catch-up through the intake and the journal (``hub.intake``, ``hub.journal``):
live readings are journaled and decided at once, their persistent copies are not
decided again, and a hub killed while catching up decides no reading twice on the next
start (the redelivered copies are recognised from the journal)."""

from __future__ import annotations

import json
from pathlib import Path

from hub.catchup import marker_topic
from hub.ingest import Ingest
from hub.intake import Intake
from hub.journal import Journal, Kind
from hub.pipeline import Pending
from models.features import spec_by_id

KINDS = {"temperature": 21.0, "humidity": 30.0, "illuminance": 400.0, "carbon_dioxide": 600.0}
MARKER = marker_topic("h")


class Queue:
    def __init__(self) -> None:
        self.submitted: list[Pending] = []

    def submit(self, item: Pending) -> None:
        self.submitted.append(item)

    def remember(self, model: str, area: str, reading_id: str) -> None:
        pass


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


def start(path: Path) -> tuple[Intake, Queue, Journal]:
    q = Queue()
    journal = Journal(path, history=100)
    journal.recover()
    intake = Intake(ingest(q), journal, live=ingest(q), marker_topic=MARKER)
    intake.replay()
    return intake, q, journal


def ack() -> None:
    pass


def warm(path: Path) -> None:
    """A hub that decided r0..r3 and was killed: the journal seeds both windows."""
    intake, q, journal = start(path)
    for n in range(4):
        intake.take(*reading(n), ack)
    intake.flush()
    intake.settled(q.submitted)
    journal._db.close()


def ids(items: list[Pending]) -> list[str]:
    return [p.trigger_id for p in items]


async def test_live_readings_are_decided_at_once_and_their_copies_never(tmp_path: Path) -> None:
    warm(tmp_path / "j.sqlite")
    intake, q, _ = start(tmp_path / "j.sqlite")
    for n in range(4, 8):  # the backlog, before the live session
        intake.take(*reading(n), ack)
    assert intake.start_live("n1") is not None
    for n in range(8, 12):  # fresh readings, on the live session
        intake.take_live(*reading(n))
    assert ids(q.submitted)[-4:] == ["r8", "r9", "r10", "r11"]
    fresh = q.submitted[-4:]
    assert not any(p.late for p in fresh)
    intake.take(MARKER, b"n1", ack)
    caught: list[bool] = []
    intake.on_live_closed = lambda: caught.append(True)
    for n in range(8, 12):
        intake.take(*reading(n), ack)
    assert caught == [True]
    intake.take_live(*reading(12))  # after the switch: the persistent session's
    intake.take(*reading(12), ack)
    assert ids(q.submitted).count("r12") == 1
    assert sorted(ids(q.submitted)) == sorted({f"r{n}" for n in range(4, 13)})


async def test_a_backlog_reading_decided_after_a_live_one_is_late(tmp_path: Path) -> None:
    warm(tmp_path / "j.sqlite")
    intake, q, _ = start(tmp_path / "j.sqlite")
    intake.take(*reading(4), ack)
    intake.start_live("n1")
    intake.take_live(*reading(20))
    intake.take(*reading(5), ack)  # older, still the backlog: a newer one was decided
    assert [(p.trigger_id, p.late) for p in q.submitted] == [
        ("r4", False),
        ("r20", False),
        ("r5", True),
    ]


async def test_a_hub_killed_while_catching_up_decides_no_reading_twice(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    intake, q1, journal = start(path)
    for n in range(10):
        intake.take(*reading(n), ack)
    intake.start_live("n1")
    for n in range(10, 20):
        intake.take_live(*reading(n))
    intake.take(MARKER, b"n1", ack)
    for n in range(10, 15):  # copies of r10..r14 matched
        intake.take(*reading(n), ack)
    intake.flush()
    # Every decision acknowledged by the audit log, but r19's (still in flight).
    decided_before = [p for p in q1.submitted if p.trigger_id != "r19"]
    intake.settled(decided_before)
    journal._db.close()  # kill -9

    intake, q2, journal = start(path)
    # The broker redelivers the last matched copies (their acknowledgements were lost),
    # then the unmatched ones, then what was published while the hub was down.
    for n in [13, 14, *range(15, 25)]:
        intake.take(*reading(n), ack)
    again = ids(q2.submitted)
    assert not set(again) & set(ids(decided_before)), "a reading decided twice"
    # r19 was journaled live but never acknowledged by the audit log: its copy decides.
    assert sorted(again, key=lambda s: int(s[1:])) == [f"r{n}" for n in range(19, 25)]
    journal._db.close()


async def test_a_second_kill_before_the_old_marker_was_read(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    intake, q1, journal = start(path)
    for n in range(5):
        intake.take(*reading(n), ack)
    intake.start_live("n1")
    for n in range(10, 14):
        intake.take_live(*reading(n))
    intake.flush()
    intake.settled(q1.submitted)
    journal._db.close()  # killed before the persistent session read n1
    live_rows = [e for e in Journal(path, history=100).entries() if e.kind == Kind.LIVE]
    assert len(live_rows) == 4

    intake, q2, journal = start(path)
    for n in range(5, 10):  # the rest of the backlog, then the marker and the copies
        intake.take(*reading(n), ack)
    intake.take(MARKER, b"n1", ack)
    for n in range(10, 16):
        intake.take(*reading(n), ack)
    assert ids(q2.submitted) == [f"r{n}" for n in (5, 6, 7, 8, 9, 14, 15)]
    journal._db.close()
