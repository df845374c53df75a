"""The hub's two ends on the broker: readings in through the journal, decisions out.

:class:`Intake` takes each reading from the MQTT session into the
:class:`hub.journal.Journal`, hands it to :class:`hub.ingest.Ingest`, and acknowledges
the QoS 1 message to the broker only once the journal holds it (committed): a hub
killed at any moment has every reading it took either in its journal (decided on the
next start) or still at the broker (redelivered). paho acknowledges on receipt by
default; :func:`manual_acks` turns that off. Without a journal (it could not be
opened or written), a reading is acknowledged when taken, counted in
``roost_hub_journal_errors_total``.

:class:`Publisher` publishes decisions at QoS 1 and waits out broker outages. When the
session drops, the publishes in flight are abandoned at once and sent again on the
next session (a decision may then arrive twice, with the same id; never lost), rather
than each waiting for a PUBACK that cannot come; and the decisions the broker
acknowledged in the last :data:`RESEND_SECONDS` before the drop are published again
first (a killed broker loses what it acknowledged from memory and had not yet saved).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import aiomqtt
from prometheus_client import Counter

from hub import mqtt
from hub.catchup import Aligner, Expected, Fate, Segment
from hub.ingest import Ingest
from hub.journal import Entry, Journal, JournalError, Kind
from hub.pipeline import STAGE_SECONDS, Outgoing, Pending
from services.kit.ratelog import RateLimitedLog

log = logging.getLogger(__name__)

JOURNAL_ERRORS = Counter(
    "roost_hub_journal_errors_total",
    "Readings journal operations that failed (readings then acknowledged as taken).",
)
# Per reading (a batch in the other stages): journaled, validated, its windows updated.
INTAKE_STAGE = STAGE_SECONDS.labels("intake")
# Journal commits (and the acknowledgements they allow) are grouped: at most this long
# after a reading is taken, or once this many wait. One commit per reading cost ~5 times
# the reading's own handling.
FLUSH_SECONDS = 0.02
ACK_EVERY = 256

Ack = Callable[[], None]


class Once:
    """An acknowledgement that is sent at most once, however often it is called."""

    def __init__(self, ack: Ack) -> None:
        self._ack: Ack | None = ack

    def __call__(self) -> None:
        ack, self._ack = self._ack, None
        if ack is not None:
            ack()


def manual_acks(client: aiomqtt.Client) -> Callable[[aiomqtt.Message], None]:
    """Turn off paho's acknowledgement on receipt; the function that acknowledges.

    aiomqtt does not expose paho's manual acknowledgements; its paho client does."""
    paho = client._client
    paho.manual_ack_set(True)

    def ack(message: aiomqtt.Message) -> None:
        if paho.is_connected():  # else the broker redelivers it to the next session
            paho.ack(message.mid, message.qos)

    return ack


def open_intake(
    ingest: Ingest, path: Path, history: int, *, live: Ingest | None = None, marker_topic: str = ""
) -> Intake:
    """The journal at ``path``, replayed into ``ingest`` (and, to seed it, ``live``: the
    windows of a catch-up's live session); without one if it cannot be opened
    (readings are then acknowledged as taken)."""
    journal: Journal | None = None
    try:
        journal = Journal(path, history=history)
        journal.recover()
    except (JournalError, OSError) as e:
        JOURNAL_ERRORS.inc()
        log.error("readings journal unavailable (%s): a crash may lose readings", e)
    intake = Intake(ingest, journal, live=live, marker_topic=marker_topic)
    again, refilled = intake.replay()
    if again or refilled:
        log.info("journal: %d readings to decide, %d replayed into windows", again, refilled)
    return intake


class Intake:
    """Readings from the broker to ingest, acknowledged once journaled."""

    def __init__(
        self,
        ingest: Ingest,
        journal: Journal | None,
        *,
        live: Ingest | None = None,
        marker_topic: str = "",
    ) -> None:
        self._ingest = ingest
        self._journal = journal
        # Catching up (hub.catchup): the live session's ingest and the matching.
        self._live = live
        self.marker_topic = marker_topic
        self.aligner: Aligner | None = Aligner(marker_topic) if live is not None else None
        # Called once the live session is to close (caught up, or the persistent
        # session was resumed).
        self.on_live_closed: Callable[[], None] = lambda: None
        # A live session is to start (until then the catch-up is not over).
        self._awaiting_live = live is not None
        self.live_taken = 0  # readings the live session took (and decided)
        self._unacked: list[Ack] = []
        self._timer: asyncio.TimerHandle | None = None
        self._log = RateLimitedLog(log)

    def replay(self) -> tuple[int, int]:
        """Feed the journal to ingest (before subscribing): undecided readings are decided
        again, decided ones refill the windows. (readings decided again, refilled)."""
        if self._journal is None:
            return 0, 0
        again = refilled = 0
        live = self._live
        segments: dict[str, Segment] = {}
        passed: set[str] = set()
        try:
            for e in list(self._journal.entries()):
                if e.kind == Kind.MARKER:
                    passed.add(e.marker)
                elif e.kind in (Kind.LIVE, Kind.VOID):
                    self._replay_live(e, segments)
                elif e.decided:
                    self._ingest.handle(e.topic, e.payload, journal_id=e.journal_id, decide=False)
                    refilled += 1
                else:
                    n = self._ingest.handle(e.topic, e.payload, journal_id=e.journal_id)
                    self._journal.taken(e.journal_id, n)
                    again += 1
                if live is not None and e.kind in (Kind.READING, Kind.COPY):
                    live.handle(e.topic, e.payload, decide=False)
            self._journal.commit()
        except JournalError as e:
            self._failed("replay", e)
        self._restore(segments, passed)
        return again, refilled

    def _replay_live(self, e: Entry, segments: dict[str, Segment]) -> None:
        """A live reading of an interrupted catch-up: one to recognise on the persistent
        session (if its copy was not taken), and part of the live windows."""
        if e.kind == Kind.LIVE and self._live is not None and not e.matched:
            self._live.handle(e.topic, e.payload, decide=False)  # remembers its ids
        seg = segments.setdefault(e.marker, Segment(e.marker))
        seg.entries.append(
            Expected(e.journal_id, e.topic, e.payload, matched=e.matched, void=e.kind == Kind.VOID)
        )

    def _restore(self, segments: dict[str, Segment], passed: set[str]) -> None:
        if self.aligner is None:
            return
        kept = []
        for seg in segments.values():
            if all(x.matched for x in seg.entries):
                continue  # done before the restart
            seg.passed = seg.marker in passed
            seg.uncertain = seg.passed and any(x.matched for x in seg.entries)
            kept.append(seg)
        if kept:
            log.info(
                "catch-up: %d live readings of an interrupted catch-up to recognise",
                sum(len(s.entries) for s in kept),
            )
        self.aligner = Aligner(self.marker_topic, kept)
        self._late_while_catching_up()

    def _late_while_catching_up(self) -> None:
        live = self._live
        if live is None:
            self._ingest.late_when = None
            return
        asked = live.asked
        self._ingest.late_when = lambda model, area: (model, area) in asked

    @property
    def catching_up(self) -> bool:
        """A live session is to start (this is the hub's start, with a live ingest)."""
        return self._awaiting_live

    def start_live(self, marker: str) -> Segment | None:
        """A live session subscribed and publishes ``marker`` next (None: no catch-up)."""
        if self.aligner is None or self._live is None:
            return None
        self._awaiting_live = False
        return self.aligner.start_live(marker)

    def live_open(self, segment: Segment) -> bool:
        return self.aligner is not None and self.aligner.live is segment

    def close_live(self) -> None:
        """The live session is closed (caught up, dropped, could not start, stopping)."""
        self._awaiting_live = False
        if self.aligner is not None:
            self.aligner.close_live()
            self._finish_if_done()
        self.on_live_closed()

    def reconnected(self) -> None:
        """The persistent session was resumed (not the first connect)."""
        if self.aligner is not None:
            self.aligner.reconnected()

    def take_live(self, topic: str, payload: bytes) -> None:
        """A reading of the live session (after its marker): journaled, decided at once
        on the live windows; its persistent copy will not be decided again."""
        aligner, live, journal = self.aligner, self._live, self._journal
        if aligner is None or aligner.live is None or live is None:
            return
        rid = 0
        if journal is not None:
            try:
                rid = journal.append(topic, payload, kind=Kind.LIVE, marker=aligner.live.marker)
            except JournalError as e:
                self._failed("append", e)
        aligner.take_live(rid, topic, payload)
        self.live_taken += 1
        n = live.handle(topic, payload, journal_id=rid)
        if journal is not None and rid != 0:
            try:
                journal.taken(rid, n)
            except JournalError as e:
                self._failed("taken", e)
            self._schedule_flush()

    def _finish_if_done(self) -> None:
        aligner = self.aligner
        if (
            aligner is not None
            and not self._awaiting_live
            and aligner.live is None
            and aligner.pending == 0
        ):
            # Caught up: the exact windows only, from now on.
            self.aligner, self._live = None, None
            self._ingest.late_when = None
            log.info(
                "catch-up: done after %d live readings; deciding on the persistent session only",
                self.live_taken,
            )

    def take(self, topic: str, payload: bytes, ack: Ack) -> None:
        """Journal and handle one reading; ``ack`` runs once the journal committed it
        (within ``FLUSH_SECONDS``)."""
        started = time.perf_counter()
        journal, rid = self._journal, 0
        if topic == self.marker_topic and self.aligner is None:
            ack()  # a catch-up marker after the catch-up
            return
        kind, link, decide, marker, caught_up = self._classify(topic, payload)
        if kind is None:  # taken before the restart: journaled already
            ack()
            self._after(caught_up)
            return
        if journal is not None:
            try:
                rid = journal.append(
                    topic,
                    payload,
                    kind=kind,
                    link=link,
                    marker=marker,
                    decided=not decide and not (link and journal.is_open(link)),
                )
            except JournalError as e:
                self._failed("append", e)
        if rid == 0:  # not journaled: acknowledged as taken
            ack()
        if kind == Kind.MARKER:
            decisions = 0
        else:
            decisions = self._ingest.handle(topic, payload, journal_id=rid, decide=decide)
        if journal is not None and rid != 0 and decide:  # a copy: decided with its live row
            try:
                journal.taken(rid, decisions)
            except JournalError as e:
                self._failed("taken", e)
        INTAKE_STAGE.observe(time.perf_counter() - started)
        if journal is not None and rid != 0:
            self._unacked.append(ack)
            self._schedule_flush()
        self._after(caught_up)

    def _classify(self, topic: str, payload: bytes) -> tuple[Kind | None, int, bool, str, bool]:
        """(row kind or None for nothing to do, live row, decide?, marker, caught up)."""
        if self.aligner is None:
            return Kind.READING, 0, True, "", False
        verdict = self.aligner.persistent(topic, payload)
        if verdict.fate == Fate.REDELIVERED:
            return None, 0, False, "", verdict.caught_up
        if verdict.fate == Fate.MARKER:
            nonce = payload.decode("ascii", "replace")
            return Kind.MARKER, 0, False, nonce, verdict.caught_up
        if verdict.entry is not None:  # the copy of a live reading (a void one: decided)
            return Kind.COPY, verdict.entry.row, verdict.fate == Fate.DECIDE, "", verdict.caught_up
        return Kind.READING, 0, True, "", verdict.caught_up

    def _after(self, caught_up: bool) -> None:
        if caught_up:
            self.close_live()  # no live reading is taken after this one
        elif self.aligner is not None and self.aligner.live is None:
            self._finish_if_done()

    def _schedule_flush(self) -> None:
        if len(self._unacked) >= ACK_EVERY:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        """Commit the journal and acknowledge what it now holds."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._journal is not None:
            try:
                self._journal.commit()
            except JournalError as e:
                self._failed("commit", e)
        for ack in self._unacked:
            ack()
        self._unacked.clear()

    def settled(self, items: Sequence[Pending], outgoing: Sequence[Outgoing] = ()) -> None:
        """The pipeline is done with these readings' decisions: mark them in the journal,
        and keep ``outgoing`` in its outbox until it is published."""
        if self._journal is None:
            return
        try:
            self._journal.settled((p.journal_id for p in items), outgoing)
        except JournalError as e:
            self._failed("settle", e)

    def published(self, outgoing: Sequence[Outgoing]) -> None:
        if self._journal is None:
            return
        try:
            self._journal.published(outgoing)
        except JournalError as e:
            self._failed("publish", e)

    async def republish(self, publish: Callable[[Sequence[Outgoing]], Awaitable[None]]) -> None:
        """Publish what the outbox held at start (decisions recorded before a crash,
        maybe never published), once the session is up."""
        if self._journal is None:
            return
        try:
            outgoing = self._journal.outbox()
        except JournalError as e:
            self._failed("outbox", e)
            return
        if outgoing:
            await publish(outgoing)
            self.published(outgoing)

    def close(self) -> None:
        if self._journal is not None:
            with contextlib.suppress(JournalError):
                self._journal.close()

    def _failed(self, what: str, error: Exception) -> None:
        JOURNAL_ERRORS.inc()
        self._log(what, "readings journal: %s failed (%s)", what, type(error).__name__)


#: Decisions the broker acknowledged this long before a session dropped are published
#: again on the next session: a broker killed then may have acknowledged them from
#: memory (PUBACK) and neither delivered nor saved them (mosquitto saves its store every
#: ``autosave_interval``, 1 s here). Subscribers may get such a decision twice, with the
#: same ``decision_id``.
RESEND_SECONDS = 2.0
RESEND_MAX = 4_096  # at most this many (the newest), whatever the rate
RESEND_TIMEOUT = 5.0  # the new session's PUBACKs for them, at most

DECISIONS_RESENT = Counter(
    "roost_hub_decisions_resent_total",
    "Decisions published again after the broker session dropped (the broker may have "
    "lost what it had acknowledged just before).",
)


def _publish(
    client: aiomqtt.Client, out: Sequence[Outgoing]
) -> Awaitable[list[BaseException | None]]:
    return mqtt.publish_all(client, [(o.topic, o.payload) for o in out])


class Publisher:
    """Publishes decisions (QoS 1); waits out broker outages instead of losing them, and
    after one publishes again what the broker acknowledged just before it
    (:data:`RESEND_SECONDS`)."""

    def __init__(self) -> None:
        self.client: aiomqtt.Client | None = None
        self.connected = asyncio.Event()
        self._dropped = asyncio.Event()
        # (when acknowledged, what) of this session's recent decisions.
        self._recent: deque[tuple[float, Outgoing]] = deque(maxlen=RESEND_MAX)
        self._resend: list[Outgoing] = []

    def attach(self, client: aiomqtt.Client) -> None:
        """A session is up: publish through ``client``."""
        self.client = client
        self._dropped = asyncio.Event()
        self.connected.set()

    def detach(self) -> None:
        """The session dropped: publishes in flight are sent again on the next one, and
        so are those acknowledged within :data:`RESEND_SECONDS` before the drop."""
        if self.connected.is_set():  # once per session
            cutoff = time.monotonic() - RESEND_SECONDS
            self._resend += [o for at, o in self._recent if at >= cutoff]
            del self._resend[:-RESEND_MAX]
            self._recent.clear()
        self.connected.clear()
        self._dropped.set()

    def _confirmed(
        self, out: Sequence[Outgoing], results: Sequence[BaseException | None]
    ) -> list[Outgoing]:
        """Remember what the broker confirmed now (for a resend after a drop); what it
        did not, to publish again."""
        now = time.monotonic()
        self._recent.extend((now, o) for o, r in zip(out, results, strict=True) if r is None)
        return [o for o, r in zip(out, results, strict=True) if r is not None]

    async def resend(self, client: aiomqtt.Client) -> int:
        """Publish again, on the new session and before any newer decision, what the
        last session's broker acknowledged just before it dropped (how many)."""
        out, self._resend = self._resend, []
        if not out:
            return 0
        try:
            results = await asyncio.wait_for(_publish(client, out), RESEND_TIMEOUT)
        except TimeoutError:  # this session is failing too: keep them for the next one
            self._resend = out
            return 0
        self._resend = self._confirmed(out, results)  # acknowledged again, from memory again
        DECISIONS_RESENT.inc(len(out) - len(self._resend))
        return len(out) - len(self._resend)

    async def __call__(self, out: Sequence[Outgoing]) -> None:
        remaining = list(out)
        while remaining:
            await self.connected.wait()
            client, dropped = self.client, self._dropped
            assert client is not None
            sends = asyncio.ensure_future(_publish(client, remaining))
            lost = asyncio.ensure_future(dropped.wait())
            await asyncio.wait((sends, lost), return_when=asyncio.FIRST_COMPLETED)
            lost.cancel()
            if not sends.done():
                sends.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sends
                continue
            remaining = self._confirmed(remaining, sends.result())
            if remaining and not dropped.is_set():
                # The MQTT loop detaches when it sees the session drop; until then,
                # retry after a short pause rather than spin.
                log.warning("%d decisions not yet published; retrying", len(remaining))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(dropped.wait(), 0.1)
