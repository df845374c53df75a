"""cli.simulate without a broker: pacing (on a fake clock), batches, argument parsing."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import pytest

from cli.household_stream import SimReading
from cli.simulate import (
    _Message,
    _Run,
    build_parser,
    due_in,
    looped,
    pacing_delay,
    simulate,
)

# --- pacing ----------------------------------------------------------------------------


def test_pacing_delay_scales_with_speedup() -> None:
    assert pacing_delay(0.0, 60.0, 60.0) == pytest.approx(1.0)
    assert pacing_delay(0.0, 60.0, 1.0) == pytest.approx(60.0)
    assert pacing_delay(100.0, 159.0, 600.0) == pytest.approx(0.0983333)
    assert pacing_delay(5.0, 5.0, 60.0) == 0.0  # the 4 readings of one row go together
    assert pacing_delay(10.0, 5.0, 60.0) == 0.0  # never negative


@pytest.mark.parametrize("speedup", [0.0, math.inf])
def test_pacing_as_fast_as_possible(speedup: float) -> None:
    assert pacing_delay(0.0, 86_400.0, speedup) == 0.0
    assert due_in(0.0, 10.0, 86_400.0, 10.0, speedup) == 0.0


@pytest.mark.parametrize("speedup", [-1.0, math.nan])
def test_pacing_rejects_bad_speedup(speedup: float) -> None:
    with pytest.raises(ValueError, match="speedup"):
        pacing_delay(0.0, 1.0, speedup)


def test_due_in_is_anchored_so_overhead_does_not_accumulate() -> None:
    # Anchor: data ts 1000 published at wall 50. At speed-up 60, data ts 1120 is due
    # at wall 52; if we are already at 51.5 (publishing was slow), wait only 0.5 s.
    assert due_in(1000.0, 50.0, 1120.0, 51.5, 60.0) == pytest.approx(0.5)
    assert due_in(1000.0, 50.0, 1120.0, 53.0, 60.0) == 0.0  # late: go at once


def _msgs(stamps: list[float]) -> Iterator[_Message]:
    return iter(_Message("roost/readings/office/temperature", 1.0, ts) for ts in stamps)


def _run(stamps: list[float], speedup: float, limit: int | None = None, batch: int = 8) -> _Run:
    return _Run(
        _msgs(stamps), speedup=speedup, limit=limit, batch_size=batch, id_prefix="sim", show=print
    )


def test_paced_batches_are_what_is_due_together() -> None:
    run = _run([0.0] * 4 + [60.0] * 4 + [120.0] * 2, speedup=60)
    assert [len(run.next_batch()) for _ in range(4)] == [4, 4, 2, 0]


def test_fast_batches_fill_up_to_batch_size_and_limit() -> None:
    run = _run([float(i // 4 * 60) for i in range(30)], speedup=0, limit=21)
    sizes = []
    while batch := run.next_batch():
        sizes.append(len(batch))
        run.published += len(batch)
    assert sizes == [8, 8, 5]


def test_payload_ids_are_never_reused() -> None:
    run = _run([0.0, 0.0], speedup=0)
    batch = run.next_batch()
    first = [json.loads(p)["id"] for p in run.payloads(batch)]
    again = [json.loads(p)["id"] for p in run.payloads(batch)]  # a re-send
    assert first == ["sim-0", "sim-1"]
    assert again == ["sim-2", "sim-3"]
    assert set(json.loads(run.payloads(batch)[0])) == {"value", "ts", "id"}


class FakeClock:
    """Wall time that moves only when the code under test sleeps (or a test says so)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class RecordingClient:
    """An MQTT client that records (wall time, data ts) per publish; each takes ``cost`` s."""

    def __init__(self, clock: FakeClock, cost: float = 0.0) -> None:
        self.clock = clock
        self.cost = cost
        self.sent: list[tuple[float, float]] = []

    async def publish(self, topic: str, payload: str, qos: int = 0) -> None:
        self.sent.append((self.clock(), json.loads(payload)["ts"]))
        self.clock.now += self.cost


def _paced_run(stamps: list[float], speedup: float, clock: FakeClock) -> _Run:
    return _Run(
        _msgs(stamps),
        speedup=speedup,
        limit=None,
        batch_size=64,
        id_prefix="sim",
        show=lambda _n: None,
        clock=clock,
        sleep=clock.sleep,
    )


async def test_paced_by_the_data_timestamps() -> None:
    # 3 rows one minute apart at speed-up 300: the rows go out 0.2 s apart.
    clock = FakeClock()
    run = _paced_run([0.0] * 4 + [60.0] * 4 + [120.0] * 4, 300, clock)
    client = RecordingClient(clock)
    await run.session(client)
    assert run.done
    assert run.published == 12
    assert [t - 100.0 for t, _ in client.sent] == pytest.approx([0.0] * 4 + [0.2] * 4 + [0.4] * 4)
    assert [ts for _, ts in client.sent] == [0.0] * 4 + [60.0] * 4 + [120.0] * 4
    assert clock.slept == pytest.approx([0.2, 0.2])


async def test_publishing_time_is_not_added_to_the_pace() -> None:
    # Each publish takes 0.0125 s (0.05 s per row): the next row waits only the rest.
    clock = FakeClock()
    run = _paced_run([0.0] * 4 + [60.0] * 4 + [120.0] * 4, 300, clock)
    await run.session(RecordingClient(clock, cost=0.0125))
    assert clock.slept == pytest.approx([0.15, 0.15])


async def test_unpaced_runs_never_sleep() -> None:
    clock = FakeClock()
    run = _paced_run([0.0] * 4 + [86_400.0] * 4, 0, clock)
    client = RecordingClient(clock)
    await run.session(client)
    assert run.published == 8
    assert clock.slept == []


# --- argument checks -------------------------------------------------------------------


def test_parser_defaults_and_areas() -> None:
    args = build_parser().parse_args([])
    assert (args.host, args.port, args.speedup, args.limit) == ("127.0.0.1", 1883, 60.0, None)
    assert (args.areas, args.source, args.split) == (["office"], "auto", "test")
    args = build_parser().parse_args(["--areas", "office, kitchen", "--speedup", "0"])
    assert args.areas == ["office", "kitchen"]
    assert args.speedup == 0.0


@pytest.mark.parametrize("argv", [["--areas", "Bad Area"], ["--speedup", "-2"], ["--source", "x"]])
def test_parser_rejects_bad_arguments(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)


async def test_simulate_rejects_bad_areas_before_connecting() -> None:
    with pytest.raises(ValueError, match="area"):
        await simulate("127.0.0.1", 1, source=[], areas=["No/Good"], progress=False)
    with pytest.raises(ValueError, match="areas"):
        await simulate("127.0.0.1", 1, source=[], areas=[], progress=False)


def test_the_stream_loops_with_time_moving_on() -> None:
    def once() -> list[SimReading]:
        return [SimReading("office", "co2", float(i), 100.0 + 60 * i) for i in range(3)]

    stream = looped(once(), once)
    got = [next(stream) for _ in range(7)]
    assert [r.value for r in got] == [0, 1, 2, 0, 1, 2, 0]
    assert [r.ts for r in got] == [100 + 60 * i for i in range(7)]  # strictly on
    assert list(looped([], once)) == []
    assert build_parser().parse_args([]).once is False
    assert build_parser().parse_args(["--once"]).once is True
