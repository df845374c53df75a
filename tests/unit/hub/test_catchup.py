"""Catch-up matching (``hub.catchup``): the persistent session's copy of each live
reading is recognised by its position after the marker, whatever the bytes repeat; no
publish is decided twice or never; the switch comes only once the persistent session
delivered every live reading; after a kill, the redelivered copies are not decided."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from hub.catchup import Aligner, Expected, Fate, Segment

MARKER_TOPIC = "roost/h/catchup"


@dataclass
class Broker:
    """A fake broker's two deliveries of one sequence of publishes: the persistent
    session gets all of them, the live session those after its subscription, and both
    the marker at the point where the hub published it."""

    publishes: list[tuple[str, bytes]]
    subscribed: int  # publishes[subscribed:] reach the live session
    marked: int  # the marker is published before publishes[marked]
    nonce: str = "n1"

    def persistent(self) -> list[int | None]:  # publish index, None = the marker
        return [*range(self.marked), None, *range(self.marked, len(self.publishes))]

    def live(self) -> list[int | None]:
        return [
            *range(self.subscribed, self.marked),
            None,
            *range(self.marked, len(self.publishes)),
        ]

    def message(self, i: int | None) -> tuple[str, bytes]:
        return (MARKER_TOPIC, self.nonce.encode()) if i is None else self.publishes[i]


def run(broker: Broker, schedule: list[bool]) -> tuple[list[int], list[str]]:
    """Reads both sessions in the order ``schedule`` says (True: persistent); how often
    each publish was decided, and the events (switch)."""
    aligner = Aligner(MARKER_TOPIC)
    seg = aligner.start_live(broker.nonce)
    decided = [0] * len(broker.publishes)
    events: list[str] = []
    p, live = broker.persistent(), broker.live()
    pi = li = 0
    started = False
    steps = iter(schedule)
    while pi < len(p):
        use_p = next(steps, True) or li >= len(live)
        if use_p:
            i = p[pi]
            pi += 1
            v = aligner.persistent(*broker.message(i))
            if v.fate == Fate.DECIDE:
                assert i is not None
                decided[i] += 1
            elif v.fate == Fate.COPY:
                assert v.entry is not None
                assert v.entry.row == i, "matched with another publish"
            elif v.fate == Fate.MARKER:
                assert i is None
            else:
                raise AssertionError(v)
            if v.caught_up:
                # Every live reading was delivered, in order: nothing past pi was taken.
                assert all(e.row < pi for e in seg.entries)
                aligner.close_live()
                events.append(f"switch@{pi}")
        else:
            i = live[li]
            li += 1
            if i is None:
                started = True
            elif started and aligner.live is seg:
                aligner.take_live(i, *broker.message(i))
                decided[i] += 1
    return decided, events


def test_a_value_repeated_before_and_after_the_outage_is_decided_once_each() -> None:
    x = ("roost/readings/office/motion", b"1")
    y = ("roost/readings/office/motion", b"0")
    # x before the outage (backlog), x again after the live session subscribed.
    broker = Broker([x, y, x, x, y, x], subscribed=3, marked=3)
    # The live session reads everything first (the backlog is slow), then the rest.
    decided, events = run(broker, [False] * 4 + [True] * 20)
    assert decided == [1] * 6
    # No premature switch on the backlog's x: only after the last live reading.
    assert events == [f"switch@{len(broker.persistent())}"]


def test_identical_publishes_after_the_marker_are_matched_by_position() -> None:
    x = ("roost/readings/office/motion", b"1")
    broker = Broker([x] * 6, subscribed=2, marked=2)
    decided, events = run(broker, [False] * 3 + [True, True, True, True, False, True] * 5)
    assert decided == [1] * 6
    assert len(events) == 1


def test_readings_between_the_subscription_and_the_marker_are_the_backlogs() -> None:
    x = ("t", b"1")
    broker = Broker([x, x, x, x], subscribed=1, marked=3)
    decided, _ = run(broker, [False] * 10 + [True] * 10)
    assert decided == [1] * 4


def test_no_backlog_switches_at_the_marker_before_the_live_session_decides() -> None:
    broker = Broker([("t", b"1"), ("t", b"2")], subscribed=0, marked=0)
    decided, events = run(broker, [True] * 10)
    assert decided == [1, 1]
    assert events == ["switch@1"]


@settings(max_examples=300, deadline=None)
@given(
    payloads=st.lists(st.sampled_from([b"1", b"0"]), min_size=1, max_size=25),
    cut=st.data(),
    schedule=st.lists(st.booleans(), max_size=80),
)
def test_every_publish_is_decided_exactly_once_whatever_repeats_and_interleaving(
    payloads: list[bytes], cut: st.DataObject, schedule: list[bool]
) -> None:
    n = len(payloads)
    subscribed = cut.draw(st.integers(0, n))
    marked = cut.draw(st.integers(subscribed, n))
    broker = Broker([("t", v) for v in payloads], subscribed, marked)
    decided, events = run(broker, schedule)
    assert decided == [1] * n
    assert len(events) <= 1


def test_a_reading_the_persistent_session_lost_is_skipped_not_decided_again() -> None:
    aligner = Aligner(MARKER_TOPIC)
    aligner.start_live("n")
    for row, v in enumerate([b"a", b"b", b"c"], start=1):
        aligner.take_live(row, "t", v)
    assert aligner.persistent(MARKER_TOPIC, b"n").fate == Fate.MARKER
    assert aligner.persistent("t", b"a").fate == Fate.COPY
    # b never reached the persistent session (the broker dropped it): c is still c.
    v = aligner.persistent("t", b"c")
    assert (v.fate, v.entry.row if v.entry else 0, v.caught_up) == (Fate.COPY, 3, True)


def test_after_a_kill_redelivered_copies_are_not_decided_and_the_unmatched_are_copies() -> None:
    # The old catch-up: its marker read, a and b matched (their acknowledgement may not
    # have reached the broker), c and d live-decided but not matched.
    entries = [
        Expected(1, "t", b"a", matched=True),
        Expected(2, "t", b"b", matched=True),
        Expected(3, "t", b"c"),
        Expected(4, "t", b"d"),
    ]
    seg = Segment("old", entries, passed=True, uncertain=True)
    aligner = Aligner(MARKER_TOPIC, [seg])
    aligner.start_live("new")
    # The broker redelivers b (a's acknowledgement arrived), then c, d, then a backlog.
    assert aligner.persistent("t", b"b").fate == Fate.REDELIVERED
    assert [aligner.persistent("t", v).fate for v in (b"c", b"d")] == [Fate.COPY, Fate.COPY]
    assert aligner.persistent("t", b"e").fate == Fate.DECIDE
    assert aligner.persistent(MARKER_TOPIC, b"new").fate == Fate.MARKER


def test_a_redelivered_old_marker_restarts_the_positions() -> None:
    entries = [Expected(1, "t", b"x", matched=True), Expected(2, "t", b"x")]
    aligner = Aligner(MARKER_TOPIC, [Segment("old", entries, passed=True, uncertain=True)])
    assert aligner.persistent(MARKER_TOPIC, b"old").fate == Fate.MARKER
    assert aligner.persistent("t", b"x").fate == Fate.REDELIVERED  # the matched one
    assert aligner.persistent("t", b"x").fate == Fate.COPY  # the unmatched one
    assert aligner.persistent("t", b"x").fate == Fate.DECIDE  # a new publish
    assert aligner.pending == 0


def test_a_void_live_reading_is_decided_from_its_copy() -> None:
    entries = [Expected(1, "t", b"a", void=True), Expected(2, "t", b"b")]
    aligner = Aligner(MARKER_TOPIC, [Segment("old", entries)])
    assert aligner.persistent("t", b"a").fate == Fate.DECIDE  # before the marker: backlog
    assert aligner.persistent(MARKER_TOPIC, b"old").fate == Fate.MARKER
    v = aligner.persistent("t", b"a")
    assert (v.fate, v.entry is not None) == (Fate.DECIDE, True)
    assert aligner.persistent("t", b"b").fate == Fate.COPY
