"""No input stops the hub: the MQTT fuzz corpus, sent live and retained through a real
broker to a real hub, and a flood of 2,000 new areas. The hub stays up, counts every drop
under its reason, keeps its state bounded and keeps deciding valid readings."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.stack import Stack
from hub import mqtt
from tests.support.fuzz_corpus import FuzzEntry, load_corpus
from tests.support.metrics import metric, scrape
from tests.support.mqtt_helpers import DAY_TS, OCCUPIED, collect_decisions, publish, readings
from tests.support.stacks import start_stack
from tests.support.waiting import wait_until_async

pytestmark = pytest.mark.integration

DROPPED = "roost_hub_readings_dropped_total"
MAX_AREAS = 20


@pytest.fixture
def own_stack(tmp_path: Path) -> Iterator[Stack]:
    st = start_stack(tmp_path)
    yield st
    st.stop()


@pytest.fixture
def capped_stack(tmp_path: Path) -> Iterator[Stack]:
    st = start_stack(tmp_path, ROOST_HUB_MAX_AREAS=str(MAX_AREAS))
    yield st
    st.stop()


async def send(stack: Stack, entries: list[FuzzEntry], *, retain: bool) -> None:
    async with mqtt.client("127.0.0.1", stack.broker_port) as client:
        for e in entries:
            await client.publish(e.topic, e.payload, qos=1, retain=retain)


async def wait_drops(stack: Stack, expected: Counter[str], what: str) -> None:
    def counted() -> bool:
        return all(metric(stack, DROPPED, reason=r) == n for r, n in expected.items())

    await wait_until_async(
        counted,
        30,
        lambda: (
            f"{what}: want {dict(expected)}, got "
            + str({r: metric(stack, DROPPED, reason=r) for r in expected})
        ),
    )


async def decides(stack: Stack, prefix: str, ts: float) -> None:
    async with collect_decisions(stack) as decisions:
        await publish(stack, readings("office", OCCUPIED, ts, prefix))
        await decisions.wait_for_trigger(f"{prefix}-carbon_dioxide", timeout=30)


async def test_the_fuzz_corpus_live_and_retained_leaves_the_hub_deciding(
    own_stack: Stack,
) -> None:
    stack = own_stack
    corpus = [e for e in load_corpus() if e.mqtt]
    await decides(stack, "before", DAY_TS)
    await send(stack, corpus, retain=False)
    await send(stack, corpus, retain=True)
    once = Counter(e.reason for e in corpus)
    await wait_drops(stack, once + once, "live and retained")
    assert stack.procs["hub"].alive()
    await decides(stack, "after", DAY_TS + 60)

    # Restart with every entry (the poison among them) retained on the broker; an empty
    # retained payload clears the topic instead, so that one is not redelivered.
    assert stack.stop_one("hub") == 0
    stack.start_hub()
    retained = Counter(e.reason for e in corpus if e.payload)
    await wait_drops(stack, retained, "retained, after a restart")
    await decides(stack, "restarted", DAY_TS + 120)
    assert stack.procs["hub"].alive()

    log = stack.procs["hub"].log_path.read_text()
    assert "Traceback" not in log
    assert max(len(line) for line in log.splitlines()) < 1000  # long names are cut
    assert "0" * 50 not in log  # the poison's digits are never logged
    # At most one line per drop reason per minute and process (two hub processes).
    drop_lines = [line for line in log.splitlines() if "dropped a reading" in line]
    assert len(drop_lines) <= 2 * len(once)


async def test_a_flood_of_2000_areas_is_capped_and_existing_areas_keep_deciding(
    capped_stack: Stack,
) -> None:
    stack = capped_stack
    await decides(stack, "before", DAY_TS)
    flood = [f"flood_{i:04d}" for i in range(2000)]
    async with collect_decisions(stack) as decisions:
        async with mqtt.client("127.0.0.1", stack.broker_port) as client:
            for area in flood:
                for topic, payload in readings(area, OCCUPIED, DAY_TS + 30, area):
                    await client.publish(topic, payload, qos=1)
        beyond = (len(flood) - (MAX_AREAS - 1)) * len(OCCUPIED)
        await wait_drops(stack, Counter({"too_many_areas": beyond}), "the flood")
        assert metric(stack, "roost_hub_areas") == MAX_AREAS
        await publish(stack, readings("office", OCCUPIED, DAY_TS + 60, "after"))
        await decisions.wait_for_trigger("after-carbon_dioxide", timeout=30)
        # Decisions are published in reading order: every admitted area has decided.
        admitted = {"office", *flood[: MAX_AREAS - 1]}
        await wait_until_async(
            lambda: {d["area"] for d in decisions.items} == admitted,
            30,
            lambda: f"decisions of the {MAX_AREAS} admitted areas only",
        )
    assert stack.procs["hub"].alive()
    assert "flood_" not in scrape(stack)  # no area in metric labels


async def test_one_bad_value_poisons_no_window_and_no_batch(own_stack: Stack) -> None:
    """1e39 overflowed float32 in the window: every later PredictBatch with that area
    failed, taking other areas' decisions with it, and 3e38 degC decided "occupied"."""
    stack = own_stack
    async with collect_decisions(stack) as decisions:
        await publish(stack, readings("kitchen", OCCUPIED, DAY_TS, "k0"))
        await publish(stack, readings("hall", OCCUPIED, DAY_TS, "h0"))
        await decisions.wait_for_trigger("h0-carbon_dioxide", timeout=30)
        await publish(
            stack,
            [
                ("roost/readings/kitchen/temperature", b'{"value": 1e39, "id": "k-big"}'),
                *readings("hall", OCCUPIED, DAY_TS + 60, "h1"),
                *readings("kitchen", {"humidity": 27.5}, DAY_TS + 60, "k1"),
            ],
        )
        await decisions.wait_for_trigger("h1-carbon_dioxide", timeout=30)
        await decisions.wait_for_trigger("k1-humidity", timeout=30)
        await publish(
            stack,
            [
                ("roost/readings/kitchen/temperature", b'{"value": 3e38, "id": "k-hot"}'),
                *readings("kitchen", {"humidity": 27.0}, DAY_TS + 120, "k2"),
            ],
        )
        await decisions.wait_for_trigger("k2-humidity", timeout=30)
    assert not {"k-big", "k-hot"} & {d["trigger_id"] for d in decisions.items}
    assert metric(stack, DROPPED, reason="not_finite") == 1
    assert metric(stack, DROPPED, reason="out_of_range") == 1
    assert metric(stack, "roost_hub_predict_failures_total") == 0
