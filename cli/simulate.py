"""``roost simulate``: replay a household sensor stream to MQTT at a chosen speed-up.

Sources yield :class:`SimReading` in timestamp order:

* :func:`replay_source` reads the real UCI Occupancy data (``models.datasets``; the data
  stays in ``../shared/data`` or ``$ROOST_DATA_DIR``, resolved once by :func:`main`),
  four readings per row: temperature, humidity, illuminance (the Light column) and
  carbon_dioxide (the CO2 column).
* :func:`synthetic_source` is a seeded generator with the same shape and similar
  statistics, used when the data is not on this machine.
* :func:`default_source` picks one of the two.

:func:`simulate` publishes each reading to ``roost/readings/<area>/<sensor_kind>``
(QoS 0, JSON ``{"value", "ts", "id"}``), pacing by the readings' own timestamps divided
by the speed-up, and reconnects (with backoff) if the broker drops.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import aiomqtt

from hub import mqtt
from hub.topics import reading_topic, valid_segment
from models.datasets import DatasetMissing, data_dir_from_env, load_occupancy, occupancy_path

logger = logging.getLogger(__name__)

# The sensor kinds of one row, in publish order (models.features.OCCUPANCY_V1).
SENSOR_KINDS = ("temperature", "humidity", "illuminance", "carbon_dioxide")
# Monday 2015-02-02 00:00 (room wall time stored as if UTC, like the real data).
DEFAULT_SYNTHETIC_START = 1422835200.0
SYNTHETIC_STEP_SECONDS = 60.0

Split = Literal["train", "test"]
SourceKind = Literal["auto", "replay", "synthetic"]


@dataclass(frozen=True)
class SimReading:
    area: str
    sensor_kind: str
    value: float
    ts: float


class _CountedIterator(Iterator[SimReading]):
    """An iterator that knows how many items it will yield (``operator.length_hint``)."""

    def __init__(self, items: Iterator[SimReading], total: int) -> None:
        self._items = items
        self._left = total

    def __iter__(self) -> _CountedIterator:
        return self

    def __next__(self) -> SimReading:
        item = next(self._items)
        self._left -= 1
        return item

    def __length_hint__(self) -> int:
        return max(self._left, 0)


# --- Sources ---------------------------------------------------------------------------


def replay_source(
    split: Split = "test", *, area: str = "office", data_dir: Path | None
) -> Iterator[SimReading]:
    """The real occupancy data in ``data_dir``, 4 readings per row. Raises
    DatasetMissing if absent."""
    data = load_occupancy(split, data_dir)  # eager: a missing data set fails here, not mid-stream
    columns = (data.temperature, data.humidity, data.light, data.co2)

    def rows() -> Iterator[SimReading]:
        for i in range(len(data)):
            ts = float(data.ts[i])
            for kind, col in zip(SENSOR_KINDS, columns, strict=True):
                yield SimReading(area, kind, float(col[i]), ts)

    return _CountedIterator(rows(), len(data) * len(SENSOR_KINDS))


@dataclass(frozen=True)
class SyntheticRow:
    """One minute of the synthetic process (``occupied`` is its ground truth)."""

    ts: float
    temperature: float
    humidity: float
    light: float
    co2: float
    occupied: bool


def _day_sessions(rng: random.Random, weekday: int) -> list[tuple[float, float]]:
    """Occupied intervals of one day, in hours since midnight."""
    if weekday >= 5:  # weekend: now and then a short visit
        if rng.random() < 0.25:
            start = rng.uniform(10.0, 15.0)
            return [(start, start + rng.uniform(0.5, 2.5))]
        return []
    if rng.random() < 0.05:  # a weekday off
        return []
    arrive = min(max(rng.gauss(8.5, 0.5), 7.0), 10.0)
    leave = min(max(rng.gauss(17.5, 0.7), 15.5), 20.0)
    if rng.random() < 0.6:  # out for lunch
        out = rng.uniform(12.0, 13.0)
        back = out + rng.uniform(0.5, 1.0)
        return [(arrive, out), (back, leave)]
    return [(arrive, leave)]


def _daylight(hour: float) -> float:
    """0 at night, up to 1 around 12:30 (an office window in February)."""
    if not 7.0 <= hour <= 18.0:
        return 0.0
    return math.sin(math.pi * (hour - 7.0) / 11.0)


def synthetic_rows(
    seed: int, start_ts: float = DEFAULT_SYNTHETIC_START, rows: int | None = None
) -> Iterator[SyntheticRow]:
    """A seeded day/night, occupied/vacant process at one-minute cadence.

    Occupied: lights on (400-700 lx), CO2 rising towards 700-1200 ppm, temperature
    about 1-1.8 degC higher. Vacant: 0 lx at night, some daylight by day, CO2 decaying
    towards outdoor 420-450 ppm. Humidity wanders in 20-35 %. ``rows=None``: endless.
    """
    rng = random.Random(seed)
    outdoor_co2 = rng.uniform(420.0, 450.0)
    base_temp = rng.uniform(20.3, 20.9)
    window_lux = rng.uniform(40.0, 160.0)
    co2 = outdoor_co2 + rng.uniform(0.0, 20.0)
    temp = base_temp
    humidity = rng.uniform(22.0, 30.0)
    day_index: int | None = None
    sessions: list[tuple[float, float]] = []
    session_co2 = 0.0
    session_lux = 0.0
    session_warm = 0.0
    was_occupied = False
    i = 0
    while rows is None or i < rows:
        ts = start_ts + i * SYNTHETIC_STEP_SECONDS
        day = int(ts // 86_400)
        hour = (ts % 86_400) / 3600.0
        if day != day_index:
            day_index = day
            sessions = _day_sessions(rng, datetime.fromtimestamp(ts, UTC).weekday())
        occupied = any(a <= hour < b for a, b in sessions)
        if occupied and not was_occupied:  # people come in: new plateau levels
            session_co2 = rng.uniform(700.0, 1200.0)
            session_lux = rng.uniform(420.0, 660.0)
            session_warm = rng.uniform(1.0, 1.8)
        was_occupied = occupied

        if occupied:
            co2 += (session_co2 - co2) / 40.0 + rng.gauss(0.0, 4.0)
            target_temp = base_temp + session_warm
            light = min(max(session_lux + rng.gauss(0.0, 12.0), 400.0), 700.0)
            target_hum = 29.0
        else:
            co2 += (outdoor_co2 - co2) / 90.0 + rng.gauss(0.0, 1.5)
            target_temp = base_temp + 0.3 * _daylight(hour)
            sun = _daylight(hour)
            light = 0.0 if sun == 0.0 else max(0.0, window_lux * sun + rng.gauss(0.0, 5.0))
            target_hum = 24.0
        temp += (target_temp - temp) / 60.0 + rng.gauss(0.0, 0.01)
        humidity += (target_hum - humidity) / 240.0 + rng.gauss(0.0, 0.05)
        co2 = max(co2, 400.0)
        humidity = min(max(humidity, 20.0), 35.0)
        yield SyntheticRow(
            ts=ts,
            temperature=round(temp, 3),
            humidity=round(humidity, 3),
            light=round(light, 1),
            co2=round(co2, 1),
            occupied=occupied,
        )
        i += 1


def synthetic_source(
    seed: int = 0,
    start_ts: float = DEFAULT_SYNTHETIC_START,
    rows: int | None = None,
    *,
    area: str = "office",
) -> Iterator[SimReading]:
    """:func:`synthetic_rows` flattened to 4 readings per row (the replay's order)."""

    def readings() -> Iterator[SimReading]:
        for row in synthetic_rows(seed, start_ts, rows):
            values = (row.temperature, row.humidity, row.light, row.co2)
            for kind, value in zip(SENSOR_KINDS, values, strict=True):
                yield SimReading(area, kind, value, row.ts)

    if rows is None:
        return readings()
    return _CountedIterator(readings(), rows * len(SENSOR_KINDS))


def default_source(
    kind: SourceKind = "auto",
    *,
    split: Split = "test",
    seed: int = 0,
    start_ts: float = DEFAULT_SYNTHETIC_START,
    rows: int | None = None,
    area: str = "office",
    data_dir: Path | None = None,
) -> Iterator[SimReading]:
    """Replay the real data in ``data_dir`` if it is there (``auto``/``replay``), else
    the generator.

    ``data_dir`` is the resolved data directory (``models.datasets.data_dir_from_env``;
    None: not on this machine). ``kind="replay"`` raises DatasetMissing when the data
    is absent; ``rows`` only bounds the synthetic source (``None``: endless).
    """
    if kind in ("auto", "replay"):
        try:
            occupancy_path(split, data_dir)
        except DatasetMissing:
            if kind == "replay":
                raise
            logger.info("occupancy data not found; using the synthetic source (seed %s)", seed)
        else:
            logger.info("replaying the occupancy '%s' split", split)
            return replay_source(split, area=area, data_dir=data_dir)
    else:
        logger.info("using the synthetic source (seed %s)", seed)
    return synthetic_source(seed, start_ts, rows, area=area)


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
    ) -> None:
        self.messages = messages
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
                    anchor = (batch[0].ts, time.monotonic())
                wait = due_in(anchor[0], anchor[1], batch[0].ts, time.monotonic(), self.speedup)
                if wait > 0:
                    await asyncio.sleep(wait)
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
    try:
        source = default_source(
            args.source,
            split=args.split,
            seed=args.seed,
            data_dir=data_dir_from_env(os.environ),
        )
    except DatasetMissing as exc:
        logger.error("%s", exc)
        return 2
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
