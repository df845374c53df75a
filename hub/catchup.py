"""Catching up after a restart: fresh readings decided at once, the backlog in order.

A restarted hub reads two MQTT sessions on the same reading topics:

* the **persistent** session (the broker kept what arrived while the hub was away) is
  read in order into the exact feature windows: its backlog is decided there, and goes
  out as late where a newer decision of that (model, area) exists;
* a clean **live** session receives only what is published from now on; its readings
  are decided at once on a live copy of the windows.

Every publish after the live session subscribed arrives on both. This module says, for
each message of the persistent session, which live reading it is (if any), so that no
reading is decided twice, and when the persistent session has caught up (then the live
session is closed and the hub goes on with the exact windows only).

**Alignment by a marker, not by content.** Once the live session is subscribed, the hub
publishes a marker (a fresh nonce on ``roost/<hub_id>/catchup``) that both sessions
receive. The broker delivers to each session in the order it received the publishes, so:

* on the live session, readings before the marker are ignored (they also reach the
  persistent session before its marker, and are decided there as backlog);
* on the persistent session, everything before the marker is backlog; after it, the
  ``i``-th reading *is* the ``i``-th reading the live session took. Identical
  ``(topic, payload)`` bytes published before and after the outage, or twice after it,
  cannot be mistaken for each other: position decides, the bytes are only checked.

If the bytes at a position differ, the two sessions diverged (the broker dropped a
message for one of them): the persistent message is looked for among the next live
readings (:data:`SEARCH`); the live readings skipped were decided already, and a
message not found is decided as backlog. Both are counted.

**After a kill.** The live readings are journaled (:mod:`hub.journal`) with their
marker, and a persistent copy is journaled once matched; on start, the live readings
not yet matched become the first :class:`Segment` s to match, in order. If the old
marker was not yet read by the persistent session, alignment is again exact. If it was,
the persistent session first redelivers the matched copies whose acknowledgement did
not reach the broker (a suffix of them, of unknown length), then the unmatched ones: a
message equal to a matched reading is a redelivery (nothing to do), and the first
unmatched reading fixes the position (``uncertain`` until then). A live reading that
was journaled but not yet decided when the hub died is a *void* entry: its persistent
copy is still at the broker, and is decided from there.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

from prometheus_client import Counter

log = logging.getLogger(__name__)

# How far ahead a persistent message is looked for among the live readings when the
# bytes at its position differ.
SEARCH = 1_000

DIVERGED = Counter(
    "roost_hub_catchup_diverged_total",
    "Catch-up alignment: live readings the persistent session skipped ('skipped') and "
    "persistent messages not found among the live readings ('unmatched').",
    ["what"],
)


def marker_topic(hub_id: str) -> str:
    return f"roost/{hub_id}/catchup"


def new_marker() -> str:
    return secrets.token_hex(16)


class Fate(Enum):
    """What to do with a message of the persistent session."""

    DECIDE = "decide"  # a reading to decide on the exact windows (backlog or, later, normal)
    COPY = "copy"  # the persistent copy of a live reading: windows only, no decision
    REDELIVERED = "redelivered"  # a copy taken before a restart, sent again: nothing to do
    MARKER = "marker"  # a catch-up marker: journal that it was read


@dataclass
class Expected:
    """A live reading, as the persistent session will deliver it."""

    row: int  # its journal id
    topic: str
    payload: bytes
    matched: bool = False  # its persistent copy was taken (journaled)
    void: bool = False  # journaled but not decided live: decide the copy instead

    def same(self, topic: str, payload: bytes) -> bool:
        return self.topic == topic and self.payload == payload


@dataclass
class Segment:
    """The live readings taken after one marker, in the order taken."""

    marker: str
    entries: list[Expected] = field(default_factory=list)
    passed: bool = False  # the persistent session read the marker
    pos: int = 0  # the next entry the persistent session delivers (once passed)
    # Passed, but where the redelivered copies end is not known yet (after a restart).
    uncertain: bool = False
    open: bool = False  # the live session is still adding to it

    @property
    def done(self) -> bool:
        return self.passed and not self.uncertain and self.pos >= len(self.entries)


@dataclass(frozen=True)
class Verdict:
    fate: Fate
    entry: Expected | None = None
    # This message caught the persistent session up with the live one: close it.
    caught_up: bool = False


class Aligner:
    """Matches the persistent session's messages with the live readings (pure logic)."""

    def __init__(self, marker_topic: str, segments: Iterable[Segment] = ()) -> None:
        self.marker_topic = marker_topic
        self._segments = [s for s in segments if not s.done]
        self._live: Segment | None = None

    @property
    def live(self) -> Segment | None:
        """The segment the live session is adding to (None: no live session)."""
        return self._live

    @property
    def pending(self) -> int:
        """Live readings the persistent session has still to deliver."""
        return sum(len(s.entries) - s.pos for s in self._segments if s.passed) + sum(
            len(s.entries) for s in self._segments if not s.passed
        )

    def start_live(self, marker: str) -> Segment:
        """A live session subscribed and is about to publish ``marker``."""
        self.close_live()
        seg = Segment(marker, open=True)
        self._segments.append(seg)
        self._live = seg
        return seg

    def take_live(self, row: int, topic: str, payload: bytes) -> None:
        """The live session took (journaled, is deciding) this reading."""
        assert self._live is not None
        self._live.entries.append(Expected(row, topic, payload))

    def close_live(self) -> None:
        """The live session takes nothing more (caught up, dropped, or stopping)."""
        if self._live is not None:
            self._live.open = False
            self._live = None
        self._prune()

    def reconnected(self) -> None:
        """The persistent session was resumed: it first redelivers what it sent and was
        not acknowledged, so positions after a passed marker are uncertain again."""
        self.close_live()
        for s in self._segments:
            if s.passed and any(e.matched for e in s.entries):
                s.uncertain = True

    def persistent(self, topic: str, payload: bytes) -> Verdict:
        """The fate of the persistent session's next message."""
        if topic == self.marker_topic:
            return self._marker(payload)
        seg = self._current()
        if seg is None or not seg.passed:
            return Verdict(Fate.DECIDE)
        if seg.uncertain:
            return self._uncertain(seg, topic, payload)
        return self._at(seg, topic, payload)

    def _current(self) -> Segment | None:
        self._prune()
        return self._segments[0] if self._segments else None

    def _prune(self) -> None:
        while self._segments and self._segments[0].done and not self._segments[0].open:
            self._segments.pop(0)

    def _marker(self, payload: bytes) -> Verdict:
        nonce = payload.decode("ascii", "replace")
        for i, seg in enumerate(self._segments):
            if seg.marker != nonce:
                continue
            for old in self._segments[:i]:  # never delivered by the persistent session
                self._skipped(len(old.entries) - old.pos if old.passed else len(old.entries))
            del self._segments[:i]
            # Read again (its acknowledgement was lost): every copy after it comes again.
            seg.passed, seg.pos, seg.uncertain = True, 0, False
            return Verdict(Fate.MARKER, caught_up=self._caught_up(seg))
        return Verdict(Fate.MARKER)  # an old marker, already done with

    def _caught_up(self, seg: Segment) -> bool:
        return seg is self._live and seg.pos >= len(seg.entries)

    def _at(self, seg: Segment, topic: str, payload: bytes) -> Verdict:
        entries = seg.entries
        if seg.pos >= len(entries):
            # The persistent session is ahead of the live one: cannot happen while the
            # live session is open (it would have been closed when caught up).
            return Verdict(Fate.DECIDE)
        if not entries[seg.pos].same(topic, payload):
            found = next(
                (
                    i
                    for i in range(seg.pos + 1, min(len(entries), seg.pos + 1 + SEARCH))
                    if entries[i].same(topic, payload)
                ),
                None,
            )
            if found is None:
                DIVERGED.labels("unmatched").inc()
                log.warning("catch-up: a persistent message matches no live reading")
                return Verdict(Fate.DECIDE)
            self._skipped(found - seg.pos)
            seg.pos = found
        return self._match(seg, entries[seg.pos])

    def _match(self, seg: Segment, entry: Expected) -> Verdict:
        seg.pos += 1
        if entry.matched:  # a copy taken before, redelivered (after its marker)
            return Verdict(Fate.REDELIVERED, entry, caught_up=self._caught_up(seg))
        entry.matched = True
        fate = Fate.DECIDE if entry.void else Fate.COPY
        return Verdict(fate, entry, caught_up=self._caught_up(seg))

    def _uncertain(self, seg: Segment, topic: str, payload: bytes) -> Verdict:
        """After a resume: redelivered copies (matched) come first, then the unmatched."""
        first = next((i for i, e in enumerate(seg.entries) if not e.matched), len(seg.entries))
        if first < len(seg.entries) and seg.entries[first].same(topic, payload):
            seg.uncertain, seg.pos = False, first
            return self._match(seg, seg.entries[first])
        for e in seg.entries[:first]:
            if e.same(topic, payload):
                return Verdict(Fate.REDELIVERED, e)
        # Neither: every copy was acknowledged and none is unmatched.
        if first >= len(seg.entries):
            seg.uncertain, seg.pos = False, first
            self._prune()
            return self.persistent(topic, payload)
        DIVERGED.labels("unmatched").inc()
        return Verdict(Fate.DECIDE)

    def _skipped(self, n: int) -> None:
        if n > 0:
            DIVERGED.labels("skipped").inc(n)
            log.warning("catch-up: %d live readings were not delivered to the hub's session", n)
