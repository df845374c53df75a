"""The chaos suite's load generator and decision recorder (loopback MQTT only).

:class:`Load` publishes readings at a steady rate — bounded in count and in time — and
records every decision the hub publishes, each over its own connection that
reconnects by itself (every 50 ms) while the broker is down, so a broker kill is
measured, not fatal. The recorder's session is persistent (QoS 1), like the hub's, so
decisions published while it reconnects wait for it at the broker. Readings are published with QoS 1: a reading counts as published
once the broker acknowledged it. Everything lands in a :class:`bench.chaos_ledger.Ledger`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from itertools import count

import aiomqtt

from bench.chaos_ledger import TRIGGER_PREFIX, Ledger, Seen
from hub import mqtt
from hub.topics import decisions_filter, reading_topic

HOST = "127.0.0.1"
RECONNECT_SECONDS = 0.05
PUBACK_TIMEOUT = 5.0
# Readings are rows of the household stream (one reading per sensor kind), spread over
# a few rooms; each row is one minute of data time after the previous one.
AREAS = ("chaos_a", "chaos_b", "chaos_c")
KINDS_PER_ROW = 4
BASE_TS = 1_423_058_400.0
ROW_SECONDS = 60.0
POLL_SECONDS = 0.02
# A backlog has drained once its undecided readings stopped changing for this long.
DRAINED_SECONDS = 1.0
DRAINED_POLL_SECONDS = 0.1

_ids = count()
# paho reports the broker's death as errors ("failed to receive on socket"): expected here.
MQTT_LOG = logging.getLogger(__name__ + ".mqtt")
MQTT_LOG.setLevel(logging.CRITICAL)


class Load:
    """Readings out at ``rate``/s and decisions in, as a context manager.

    ``values`` are (sensor kind, value) pairs in the household stream's row order
    (``bench.e2e.sample_readings``), cycled; reading ``seq`` goes to area
    ``AREAS[row % 3]`` with id ``chaos-<seq>``. Publishing stops after ``max_readings``,
    after ``max_seconds``, or on :meth:`stop`.
    """

    def __init__(
        self,
        *,
        port: int,
        hub_id: str,
        rate: float,
        values: Sequence[tuple[str, float]],
        max_readings: int,
        max_seconds: float,
    ) -> None:
        if not values or len(values) % KINDS_PER_ROW:
            raise ValueError(f"values must be whole rows of {KINDS_PER_ROW} readings")
        self.ledger = Ledger()
        self._port = port
        self._hub_id = hub_id
        self._rate = rate
        self._values = values
        self._max_readings = max_readings
        self._max_seconds = max_seconds
        self._publisher: aiomqtt.Client | None = None
        self._subscribed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._sends: set[asyncio.Task[None]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._name = f"chaos-{os.getpid()}-{next(_ids)}"

    # --- lifecycle -----------------------------------------------------------------

    async def __aenter__(self) -> Load:
        # aiomqtt's socket race on a broker kill (as in the hub): DEBUG, not a traceback.
        mqtt.quiet_socket_races(asyncio.get_running_loop())
        self._tasks = [
            # Decisions published while this subscriber reconnects (a broker restart) are
            # kept for it: a decision missed here would be the recorder's loss, not the hub's.
            asyncio.create_task(self._link("sub", self._receive, persistent=True)),
            asyncio.create_task(self._link("pub", self._hold_publisher)),
        ]
        connected = await self._until(
            lambda: self._subscribed.is_set() and self._publisher is not None, 15.0
        )
        if not connected:
            await self.__aexit__()
            raise RuntimeError(f"no MQTT connection to the broker on port {self._port}")
        self._tasks.append(asyncio.create_task(self._pace()))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop()
        await asyncio.gather(*list(self._sends), return_exceptions=True)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await task

    def stop(self) -> None:
        """Stop publishing (decisions are still recorded until the context exits)."""
        self._stopping.set()

    # --- connections ---------------------------------------------------------------

    async def _link(
        self,
        role: str,
        session: Callable[[aiomqtt.Client], Awaitable[None]],
        *,
        persistent: bool = False,
    ) -> None:
        """Keep one connection: run ``session`` on it, reconnect when the broker drops it.
        ``persistent``: one session across reconnects (the broker keeps what arrives)."""
        while True:
            try:
                async with mqtt.client(
                    HOST,
                    self._port,
                    identifier=f"{self._name}-{role}",
                    timeout=PUBACK_TIMEOUT,
                    logger=MQTT_LOG,
                    clean_session=not persistent,
                ) as client:
                    # Backlogs of PUBACKs are expected here; aiomqtt warns above 10.
                    client.pending_calls_threshold = 1_000_000
                    await session(client)
            except aiomqtt.MqttError:
                pass
            await asyncio.sleep(RECONNECT_SECONDS)

    async def _receive(self, client: aiomqtt.Client) -> None:
        await client.subscribe(decisions_filter(self._hub_id), qos=1)
        self._subscribed.set()
        async for message in client.messages:
            arrived = time.monotonic()
            payload = message.payload
            if not isinstance(payload, bytes):
                continue
            try:
                doc = json.loads(payload)
                trigger = str(doc["trigger_id"])
                seen = Seen(
                    str(doc["decision_id"]),
                    int(doc["audit_index"]),
                    str(doc["model"]["name"]),
                    arrived,
                )
            except (ValueError, KeyError, TypeError):
                self.ledger.malformed += 1
                continue
            self.ledger.record(trigger, seen)

    async def _hold_publisher(self, client: aiomqtt.Client) -> None:
        self._publisher = client
        try:
            async for _ in client.messages:  # nothing subscribed: returns when it drops
                pass
        finally:
            self._publisher = None

    # --- publishing ----------------------------------------------------------------

    def reading(self, seq: int) -> tuple[str, str, float]:
        """Area, sensor kind and reading time of reading ``seq``."""
        kind, _ = self._values[seq % len(self._values)]
        row = seq // KINDS_PER_ROW
        return AREAS[row % len(AREAS)], kind, BASE_TS + row * ROW_SECONDS

    def message(self, seq: int) -> tuple[str, bytes]:
        """Topic and payload of reading ``seq``."""
        area, kind, ts = self.reading(seq)
        value = self._values[seq % len(self._values)][1]
        body = {"value": value, "ts": ts, "id": f"{TRIGGER_PREFIX}{seq}"}
        return reading_topic(area, kind), json.dumps(body).encode()

    async def _pace(self) -> None:
        start = time.monotonic()
        for seq in range(self._max_readings):
            due = start + seq / self._rate
            delay = due - time.monotonic()
            if delay > 0.0005:
                await asyncio.sleep(delay)  # the pacing of the stream
            if self._stopping.is_set() or time.monotonic() - start > self._max_seconds:
                return
            self._send()

    def _send(self) -> None:
        seq = self.ledger.offered(time.monotonic())
        client = self._publisher
        if client is None:  # the broker is down: not published
            return
        topic, payload = self.message(seq)
        task = asyncio.create_task(self._publish(client, seq, topic, payload))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _publish(self, client: aiomqtt.Client, seq: int, topic: str, payload: bytes) -> None:
        try:
            await client.publish(topic, payload, qos=1, timeout=PUBACK_TIMEOUT)
        except aiomqtt.MqttError:
            return  # never acknowledged: not published
        self.ledger.acked.add(seq)

    # --- waiting on the stream -----------------------------------------------------

    @staticmethod
    async def _until(predicate: Callable[[], bool], within: float) -> bool:
        deadline = time.monotonic() + within
        while not predicate():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(POLL_SECONDS)
        return True

    async def decided_after(self, at: float, within: float) -> bool:
        """Until a decision arrived for a reading offered at or after monotonic ``at``."""
        seq = self.ledger.first_sent_at_or_after(at)
        return await self._until(lambda: self.ledger.max_decided >= seq, within)

    async def caught_up(self, within: float, *, since: int = 0) -> bool:
        """Until the decision of the latest reading offered so far (or a later one) arrived,
        and then the backlog before it drained: the published readings from ``since`` on
        still undecided are none, or stayed as many for ``DRAINED_SECONDS`` (lost). The hub
        decides fresh readings first while a backlog drains (late decisions)."""
        deadline = time.monotonic() + within
        seq = self.ledger.next_seq - 1
        if not await self._until(lambda: self.ledger.max_decided >= seq, within):
            return False
        last, since_change = -1, time.monotonic()
        while time.monotonic() < deadline:
            undecided = self.ledger.undecided(since, seq)
            if undecided == 0:
                return True
            if undecided != last:
                last, since_change = undecided, time.monotonic()
            elif time.monotonic() - since_change >= DRAINED_SECONDS:
                return True
            await asyncio.sleep(DRAINED_POLL_SECONDS)
        return False

    async def quiet(self, quiet: float, limit: float) -> None:
        """Until no decision arrived for ``quiet`` seconds (at most ``limit`` seconds)."""
        deadline = time.monotonic() + limit
        last, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            if self.ledger.received != last:
                last, since = self.ledger.received, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return
            await asyncio.sleep(POLL_SECONDS)
