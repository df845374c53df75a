"""``roost simulate``: replay a household sensor stream to MQTT at a chosen speed-up.

:func:`simulate` publishes each reading of a source (``cli.household_stream``: the real
data or a seeded generator) to ``roost/readings/<area>/<sensor_kind>`` (QoS 0, JSON
``{"value", "ts", "id"}``), pacing by the readings' own timestamps divided by the
speed-up, and reconnects (with backoff) if the broker drops. :func:`main` is the command.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import operator
import os
import random
import ssl
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import aiomqtt

from cli.household_stream import SimReading, default_source
from hub import mqtt
from hub.topics import reading_topic, valid_segment
from models.datasets import DatasetMissing, data_dir_from_env

logger = logging.getLogger(__name__)


# --- Pacing ----------------------------------------------------------------------------


def as_fast_as_possible(speedup: float) -> bool:
    """speedup 0 (or infinity) means: do not pace at all."""
    if math.isnan(speedup) or speedup < 0:
        raise ValueError(f"speedup must be >= 0 (0 or inf: as fast as possible), got {speedup}")
    return speedup == 0 or math.isinf(speedup)


def pacing_delay(prev_ts: float, ts: float, speedup: float) -> float:
    """Wall seconds between two readings ``prev_ts`` -> ``ts`` of data time."""
    if as_fast_as_possible(speedup):
        return 0.0
    return max(ts - prev_ts, 0.0) / speedup


def due_in(first_ts: float, started: float, ts: float, now: float, speedup: float) -> float:
    """Seconds to wait before publishing a reading of data time ``ts``.

    Scheduled against the anchor (``first_ts`` published at wall time ``started``)
    rather than reading to reading, so the publishing overhead does not accumulate.
    """
    return max(started + pacing_delay(first_ts, ts, speedup) - now, 0.0)


# --- Publishing ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Message:
    topic: str
    value: float
    ts: float


def _messages(source: Iterable[SimReading], areas: Sequence[str] | None) -> Iterator[_Message]:
    for r in source:
        if areas is None:
            yield _Message(reading_topic(r.area, r.sensor_kind), r.value, r.ts)
        else:
            for area in areas:
                yield _Message(reading_topic(area, r.sensor_kind), r.value, r.ts)


def _progress_bar(
    enabled: bool, total: int | None
) -> tuple[contextlib.AbstractContextManager[Any], Callable[[int], None]]:
    """A rich progress bar (if enabled, rich is installed and stdout is a TTY)."""
    if not (enabled and sys.stdout.isatty()):
        return contextlib.nullcontext(), lambda _n: None
    try:
        from rich.progress import (  # noqa: PLC0415 - rich is a dev extra; optional here
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
    except ImportError:
        return contextlib.nullcontext(), lambda _n: None
    bar = Progress(
        TextColumn("[bold]roost simulate"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    task = bar.add_task("publish", total=total)
    return bar, lambda n: bar.update(task, completed=n)


def _expected_total(source: Iterable[SimReading], fanout: int, limit: int | None) -> int | None:
    hint = operator.length_hint(source, 0)
    total = hint * fanout if hint else None
    if limit is not None:
        total = limit if total is None else min(total, limit)
    return total


class _Run:
    """The state of one simulate() call, kept across reconnections."""

    def __init__(
        self,
        messages: Iterator[_Message],
        *,
        speedup: float,
        limit: int | None,
        batch_size: int,
        id_prefix: str,
        show: Callable[[int], None],
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.messages = messages
        self.clock = clock  # wall seconds for pacing, and how to wait for the next batch
        self.sleep = sleep
        self.speedup = speedup
        self.fast = as_fast_as_possible(speedup)
        self.limit = limit
        self.batch_size = batch_size
        self.id_prefix = id_prefix
        self.show = show
        self.queue: deque[_Message] = deque()  # read from the source, not yet published
        self.published = 0
        self.seq = 0  # payload id counter; never reused, even for a re-sent message
        self.done = False

    def next_batch(self) -> list[_Message]:
        """The next messages to publish together: all due at once, at most batch_size."""
        room = self.batch_size
        if self.limit is not None:
            room = min(room, self.limit - self.published)
        queue = self.queue
        while len(queue) < room:
            msg = next(self.messages, None)
            if msg is None:
                break
            queue.append(msg)
            if not self.fast and msg.ts != queue[0].ts:
                break  # paced: only what is due together
        head_ts = queue[0].ts if queue else 0.0
        batch: list[_Message] = []
        while queue and len(batch) < room and (self.fast or queue[0].ts == head_ts):
            batch.append(queue.popleft())
        return batch

    def payloads(self, batch: list[_Message]) -> list[str]:
        out = []
        for m in batch:
            out.append(
                json.dumps({"value": m.value, "ts": m.ts, "id": f"{self.id_prefix}-{self.seq}"})
            )
            self.seq += 1
        return out

    async def session(self, client: Any) -> None:
        """Publish on one connection until the end (sets ``done``) or an MqttError."""
        anchor: tuple[float, float] | None = None  # (data ts, wall time); new per connection
        while True:
            batch = self.next_batch()
            if not batch:
                self.done = True
                return
            if not self.fast:
                if anchor is None:
                    anchor = (batch[0].ts, self.clock())
                wait = due_in(anchor[0], anchor[1], batch[0].ts, self.clock(), self.speedup)
                if wait > 0:
                    await self.sleep(wait)
            failed, error = await _publish_batch(client, batch, self.payloads(batch))
            self.published += len(batch) - len(failed)
            self.show(self.published)
            if error is not None:
                self.queue.extendleft(reversed(failed))  # re-sent after reconnecting
                raise error


async def _publish_batch(
    client: Any, batch: list[_Message], payloads: list[str]
) -> tuple[list[_Message], BaseException | None]:
    """Publish concurrently (paho keeps the call order). -> (failed messages, first error)."""
    results = await asyncio.gather(
        *(client.publish(m.topic, p, qos=0) for m, p in zip(batch, payloads, strict=True)),
        return_exceptions=True,
    )
    failed = [m for m, r in zip(batch, results, strict=True) if r is not None]
    errors = [r for r in results if isinstance(r, BaseException)]
    mqtt_errors = [e for e in errors if isinstance(e, aiomqtt.MqttError)]
    return failed, (mqtt_errors or errors or [None])[0]


async def simulate(
    host: str,
    port: int,
    *,
    speedup: float = 60.0,
    source: Iterable[SimReading],
    limit: int | None = None,
    areas: Sequence[str] | None = ("office",),
    tls: ssl.SSLContext | None = None,
    progress: bool = True,
    max_retries: int = 5,
    retry_backoff: float = 0.5,
    id_prefix: str = "sim",
    batch_size: int = 64,
) -> int:
    """Publish ``source`` to the broker; returns the number of messages published.

    Each reading goes to every area of ``areas`` (the reading's own area is replaced;
    ``areas=None`` keeps it), so N areas is N times the load. ``limit`` caps the
    number of messages. Pacing follows the readings' timestamps divided by
    ``speedup`` (0 or inf: as fast as possible); messages due at the same moment (a
    row's readings, all areas; with no pacing up to ``batch_size``) are published
    concurrently, in order. Payload ids are ``<id_prefix>-<n>``, unique per run.

    A dropped connection is retried up to ``max_retries`` times in a row with
    exponential backoff, then the MqttError is raised; messages that failed to go out
    are re-sent after reconnecting (QoS 0: ones the broker lost silently are not).
    Cancellation disconnects and propagates.
    """
    as_fast_as_possible(speedup)  # validates it
    if areas is not None:
        if not areas:
            raise ValueError("areas must not be empty (None: keep each reading's area)")
        bad = [a for a in areas if not valid_segment(a)]
        if bad:
            raise ValueError(f"invalid area names (lowercase snake_case): {bad}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    total = _expected_total(source, 1 if areas is None else len(areas), limit)
    bar, show = _progress_bar(progress, total)
    run = _Run(
        _messages(source, areas),
        speedup=speedup,
        limit=limit,
        batch_size=batch_size,
        id_prefix=id_prefix,
        show=show,
    )
    try:
        with bar:
            try:
                await _run_with_retries(
                    run, host, port, tls=tls, max_retries=max_retries, retry_backoff=retry_backoff
                )
            finally:
                show(run.published)
    finally:
        logger.info("published %d messages to %s:%s", run.published, host, port)
    return run.published


async def _run_with_retries(
    run: _Run,
    host: str,
    port: int,
    *,
    tls: ssl.SSLContext | None,
    max_retries: int,
    retry_backoff: float,
) -> None:
    identifier = f"roost-sim-{os.getpid()}-{random.getrandbits(32):08x}"
    failures = 0
    while True:
        try:
            async with mqtt.client(
                host, port, identifier=identifier, tls_context=tls, timeout=5.0
            ) as client:
                client.pending_calls_threshold = run.batch_size + 16
                if failures:
                    logger.info("reconnected to the broker")
                failures = 0
                await run.session(client)
            return
        except aiomqtt.MqttError as exc:
            if run.done:
                return  # everything went out; only the disconnect failed
            failures += 1
            if failures > max_retries:
                logger.error("broker %s:%s unreachable after %d attempts", host, port, max_retries)
                raise
            backoff = min(retry_backoff * 2 ** (failures - 1), 10.0)
            logger.warning(
                "broker connection failed (%s); retry %d/%d in %.1f s",
                exc,
                failures,
                max_retries,
                backoff,
            )
            await asyncio.sleep(backoff)


def looped(
    first: Iterable[SimReading], again: Callable[[], Iterable[SimReading]]
) -> Iterator[SimReading]:
    """``first``, then ``again()`` over and over, each pass continuing the timestamps of
    the one before (one step after its last reading), so time keeps moving on."""
    offset, source = 0.0, first
    while True:
        start = last = step = None
        for r in source:
            if start is None:
                start = r.ts
            elif step is None and r.ts > start:
                step = r.ts - start
            last = r.ts
            yield dataclasses.replace(r, ts=r.ts + offset)
        if start is None or last is None:
            return  # an empty stream stays empty
        offset += last - start + (step or 1.0)
        source = again()


# --- CLI -------------------------------------------------------------------------------


def _parse_speedup(text: str) -> float:
    try:
        value = float(text)
        as_fast_as_possible(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _parse_areas(text: str) -> list[str]:
    areas = [a.strip() for a in text.split(",") if a.strip()]
    bad = [a for a in areas if not valid_segment(a)]
    if not areas or bad:
        raise argparse.ArgumentTypeError(
            f"areas must be comma-separated lowercase snake_case names, got {text!r}"
        )
    return areas


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="roost simulate",
        description="Replay a household sensor stream to MQTT (roost/readings/<area>/<kind>).",
    )
    p.add_argument("--host", default="127.0.0.1", help="MQTT broker host (default %(default)s)")
    p.add_argument("--port", type=int, default=1883, help="MQTT broker port (default %(default)s)")
    p.add_argument(
        "--speedup",
        type=_parse_speedup,
        default=60.0,
        help="data seconds per wall second; 0 = as fast as possible (default %(default)s)",
    )
    p.add_argument("--limit", type=int, default=None, help="stop after N messages")
    p.add_argument(
        "--once",
        action="store_true",
        help="replay the stream once and stop (default: loop, time moving on each pass)",
    )
    p.add_argument(
        "--areas",
        type=_parse_areas,
        default=["office"],
        help="comma-separated areas; the stream is replayed into each (default office)",
    )
    p.add_argument(
        "--source",
        choices=("auto", "replay", "synthetic"),
        default="auto",
        help="real data (replay), generator (synthetic), or replay if present (auto)",
    )
    p.add_argument("--split", choices=("test", "train"), default="test", help="replay split")
    p.add_argument("--seed", type=int, default=0, help="synthetic source seed")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.DEBUG if args.verbose else logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
    if args.limit is not None and args.limit < 0:
        logger.error("--limit must be >= 0")
        return 2

    def make_source() -> Iterator[SimReading]:
        return default_source(
            args.source, split=args.split, seed=args.seed, data_dir=data_dir_from_env(os.environ)
        )

    try:
        first = make_source()
    except DatasetMissing as exc:
        logger.error("%s", exc)
        return 2
    source = first if args.once else looped(first, make_source)
    try:
        asyncio.run(
            simulate(
                args.host,
                args.port,
                speedup=args.speedup,
                source=source,
                limit=args.limit,
                areas=args.areas,
                progress=args.progress,
            )
        )
    except KeyboardInterrupt:
        return 130
    except aiomqtt.MqttError as exc:
        logger.error("MQTT error: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
