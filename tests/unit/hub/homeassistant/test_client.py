"""The Home Assistant client side: allow-listed actions run in order with bounded
attempts, and history import resampled onto a model's feature windows."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hub.action_memory import MEMORY_FILE, ActionMemory
from hub.homeassistant.client import (
    ActionRunner,
    HaClient,
    HaUnavailable,
    build_examples,
    parse_label_map,
    read_token,
)
from hub.policy import ActionRule
from models.features import OCCUPANCY_V1

RULE = ActionRule("occupancy", "kitchen", "vacant", "light", "turn_off", "light.kitchen")


class FakeHa:
    """Fails the first ``failures`` calls; stops the runner after ``calls`` calls. The
    entity's state is ``current`` (None: unreadable); a call does not change it."""

    def __init__(
        self, failures: int, calls: int, stop: asyncio.Event, current: str | None = "on"
    ) -> None:
        self.failures = failures
        self.remaining = calls
        self.stop = stop
        self.current = current
        self.loop = asyncio.get_running_loop()
        self.called: list[str] = []
        self.read: list[str] = []
        self.stop_after_reads = 0

    def state(self, entity_id: str) -> str:
        self.read.append(entity_id)
        if len(self.read) == self.stop_after_reads:
            self.loop.call_soon_threadsafe(self.stop.set)
        if self.current is None:
            raise HaUnavailable("down")
        return self.current

    def call_service(self, domain: str, service: str, entity_id: str) -> None:
        self.called.append(f"{domain}.{service}:{entity_id}")
        self.remaining -= 1
        if self.remaining == 0:  # runs in a worker thread
            self.loop.call_soon_threadsafe(self.stop.set)
        if self.failures:
            self.failures -= 1
            raise HaUnavailable("down")


def test_actions_are_retried_then_called_in_order() -> None:
    async def go() -> tuple[ActionRunner, FakeHa]:
        stop = asyncio.Event()
        ha = FakeHa(failures=2, calls=4, stop=stop)
        runner = ActionRunner(ha, attempts=3, backoff=0.0)  # type: ignore[arg-type]
        runner.submit(RULE, "d1")
        runner.submit(RULE, "d2")
        await runner.run(stop)
        return runner, ha

    runner, ha = asyncio.run(go())
    assert runner.done == [("d1", "called"), ("d2", "called")]
    assert ha.called == ["light.turn_off:light.kitchen"] * 4


def test_an_action_called_leaves_no_info_line(caplog: pytest.LogCaptureFixture) -> None:
    """Its time would say when a room was judged empty (docs/privacy.md: nothing at INFO)."""

    async def go() -> None:
        stop = asyncio.Event()
        ha = FakeHa(failures=0, calls=1, stop=stop)
        runner = ActionRunner(ha, attempts=1, backoff=0.0)  # type: ignore[arg-type]
        runner.submit(RULE, "d1")
        await runner.run(stop)
        assert runner.done == [("d1", "called")]

    with caplog.at_level("INFO", logger="hub"):
        asyncio.run(go())
    assert [r.getMessage() for r in caplog.records if r.levelname == "INFO"] == []


def test_actions_fail_after_every_attempt_and_the_queue_is_bounded() -> None:
    async def go() -> ActionRunner:
        stop = asyncio.Event()
        ha = FakeHa(failures=2, calls=2, stop=stop)
        runner = ActionRunner(ha, attempts=2, backoff=0.0, max_queue=1)  # type: ignore[arg-type]
        runner.submit(RULE, "d1")
        runner.submit(RULE, "d2")  # the queue holds one: d1 is dropped
        await runner.run(stop)
        return runner

    assert asyncio.run(go()).done == [("d1", "dropped"), ("d2", "failed")]


def test_an_entity_already_in_that_state_is_left_alone(tmp_path: Path) -> None:
    """The light is already off: turn_off is not called (unneeded), nothing remembered;
    a state that cannot be read does not stop the call, which is remembered on disk."""

    async def go(current: str | None, memory: ActionMemory) -> tuple[ActionRunner, FakeHa]:
        stop = asyncio.Event()
        ha = FakeHa(failures=0, calls=1, stop=stop, current=current)
        runner = ActionRunner(ha, backoff=0.0, memory=memory)  # type: ignore[arg-type]
        runner.submit(RULE, "d1")
        if current == "off":  # nothing is called: the second read stops the runner
            runner.submit(RULE, "d2")
            ha.stop_after_reads = 2
        await asyncio.wait_for(runner.run(stop), 10)
        return runner, ha

    memory = ActionMemory.load(tmp_path / MEMORY_FILE)
    runner, ha = asyncio.run(go("off", memory))
    assert runner.done == [("d1", "unneeded"), ("d2", "unneeded")]
    assert ha.called == []
    assert ha.read == ["light.kitchen"] * 2
    assert memory.actions == {}
    runner, ha = asyncio.run(go(None, memory))
    assert runner.done == [("d1", "called")]
    assert ha.called == ["light.turn_off:light.kitchen"]
    again = ActionMemory.load(tmp_path / MEMORY_FILE)
    assert again.actions["light.kitchen"]["action"] == "light.turn_off"
    assert again.actions["light.kitchen"]["decision_id"] == "d1"


def test_token_and_url_must_be_configured(tmp_path: Path) -> None:
    with pytest.raises(HaUnavailable, match="not set"):
        read_token(None)
    empty = tmp_path / "token"
    empty.write_text("\n")
    with pytest.raises(HaUnavailable, match="empty"):
        read_token(empty)
    empty.write_text(" abc \n")
    assert read_token(empty) == "abc"
    with pytest.raises(HaUnavailable, match="ha_url"):
        HaClient("", "abc")


def test_label_maps() -> None:
    assert parse_label_map("on=occupied, off = vacant") == {"on": "occupied", "off": "vacant"}
    with pytest.raises(ValueError, match="must look like"):
        parse_label_map("on")


def test_build_examples_resamples_history_onto_feature_windows() -> None:
    t0 = 1_700_000_000.0
    series = {
        "temperature": [(t0, "21.5"), (t0 + 600, "22.0")],
        "humidity": [(t0, "30"), (t0 + 300, "unavailable")],
        "illuminance": [(t0, "400")],
        "carbon_dioxide": [(t0 + 60, "800")],
    }
    labels = [(t0, "on"), (t0 + 1200, "off"), (t0 + 1500, "weird")]
    examples = build_examples(
        OCCUPANCY_V1, series, labels, parse_label_map("on=occupied,off=vacant"), t0, t0 + 1800
    )
    # Ready from t0+60 (co2 first seen), every 60 s; "weird" maps to nothing; forward fill
    # keeps the window fresh although the sensors reported rarely.
    assert len(examples) == 24  # t0+60 .. t0+1440
    assert examples[0].label == "occupied"
    assert examples[-1].label == "vacant"
    assert list(examples[0].input.shape) == [6]
    assert examples[0].input.float_values[:4] == [21.5, 30.0, 400.0, 800.0]
    assert examples[-1].input.float_values[0] == 22.0
