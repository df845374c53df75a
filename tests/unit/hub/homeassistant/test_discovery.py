"""Discovery: one retained config per entity, bounded in size, linear in bytes, capped, and
the single device config of earlier versions migrated before anything is announced."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from hub.homeassistant.bridge import HaBridge
from hub.homeassistant.entities import MIGRATE_PAYLOAD
from hub.homeassistant.metrics import HA_ENTITIES_REFUSED
from hub.pipeline import Recorded
from tests.support.mqtt_fakes import LoopbackClient
from tests.support.waiting import wait_until_async

PREFIX = "homeassistant/"
LEGACY = "homeassistant/device/roost_home-1/config"
# Per area: occupancy (the prediction and its "was wrong" button), comfort, anomaly.
MODELS = ("occupancy", "comfort", "anomaly")
ENTITIES_PER_AREA = 4
AREAS = 2000
MAX_CONFIG_BYTES = 2048


def recorded(model: str, area: str, decision_id: str) -> Recorded:
    topic = f"roost/home-1/decisions/{model}/{area}"
    return Recorded(model, area, decision_id, "vacant", 7, topic, b"{}", None)


def configs(client: LoopbackClient) -> list[tuple[str, bytes]]:
    return [(p.topic, p.payload) for p in client.under(PREFIX) if p.topic != LEGACY]


@asynccontextmanager
async def connected(
    bridge: HaBridge, client: LoopbackClient | None = None
) -> AsyncIterator[LoopbackClient]:
    """``bridge`` in a session with a loopback broker, its outbox flushed meanwhile."""
    client = client or LoopbackClient(bridge.handle)
    stop = asyncio.Event()
    flusher = asyncio.create_task(bridge._flusher(stop))
    await bridge.on_connect(client)  # type: ignore[arg-type]
    try:
        yield client
    finally:
        stop.set()
        flusher.cancel()
        await bridge.idle()


async def test_2000_areas_publish_bounded_configs_and_linear_bytes(
    make_bridge: Callable[..., HaBridge],
) -> None:
    b = make_bridge(max_entities=10_000)
    async with connected(b) as client:
        await wait_until_async(lambda: client.under(PREFIX), 5, "the first configs", interval=0)
        static = len(b.components)
        marks = []
        for i in range(AREAS):
            area = f"area_{i}"
            mark = len(client.published)
            await b.on_recorded([recorded(m, area, f"d-{i}-{m}") for m in MODELS])
            # Worst case for a growing config: each area's discovery goes out before the next.
            await wait_until_async(
                lambda a=area, m=mark: any(  # type: ignore[misc]
                    a in p.topic or a.encode() in p.payload for p in client.published[m:]
                ),
                5,
                f"the discovery of {area}",
                interval=0,
            )
            sizes = [len(p.payload) for p in client.published[mark:] if PREFIX in p.topic]
            assert max(sizes) <= MAX_CONFIG_BYTES, (area, max(sizes))
            marks.append(mark)
        await wait_until_async(
            lambda: len(configs(client)) == static + AREAS * ENTITIES_PER_AREA,
            10,
            lambda: f"{static + AREAS * ENTITIES_PER_AREA} configs (have {len(configs(client))})",
            interval=0,
        )
        # A known entity's next decision publishes no config again.
        before = len(configs(client))
        await b.on_recorded([recorded("occupancy", "area_0", "again")])
        await b.idle()
    sizes = [len(payload) for _, payload in configs(client)]
    assert max(sizes) <= MAX_CONFIG_BYTES, max(sizes)
    assert len(configs(client)) == before
    topics = [t for t, _ in configs(client)]
    assert len(topics) == len(set(topics))  # every config once
    # Linear: the second thousand areas cost what the first did (quadratic: three times).
    half = marks[AREAS // 2]
    first = sum(len(p.payload) for p in client.published[marks[0] : half] if PREFIX in p.topic)
    second = sum(len(p.payload) for p in client.published[half:] if PREFIX in p.topic)
    assert second <= 1.05 * first, (first, second)
    assert first + second <= AREAS * ENTITIES_PER_AREA * MAX_CONFIG_BYTES


async def test_each_config_carries_the_hub_or_its_areas_device_block(
    make_bridge: Callable[..., HaBridge],
) -> None:
    """The hub's entities share the hub's device block; a room's share the room's, which
    points at the hub (``via_device``)."""
    b = make_bridge()
    async with connected(b) as client:
        await b.on_recorded([recorded("occupancy", "kitchen", "d1")])
        await wait_until_async(
            lambda: any("occupancy_kitchen_wrong" in t for t, _ in configs(client)),
            5,
            "the kitchen's configs",
            interval=0,
        )
    docs = {t: json.loads(p) for t, p in configs(client)}
    sensor = docs["homeassistant/binary_sensor/roost_home-1/occupancy_kitchen/config"]
    assert sensor["unique_id"] == "roost_home-1_occupancy_kitchen"
    assert sensor["state_topic"] == "roost/home-1/decisions/occupancy/kitchen"
    assert "p" not in sensor  # the platform is in the topic
    assert docs["homeassistant/select/roost_home-1/learning_mode/config"]["options"] == [
        "learning",
        "paused",
        "local-only",
    ]
    kitchen = {t: d for t, d in docs.items() if "/occupancy_kitchen" in t}
    assert len(kitchen) == 2  # the prediction and its "was wrong" button
    assert len({json.dumps(d["dev"]) for d in kitchen.values()}) == 1
    assert sensor["dev"]["ids"] == ["roost_home-1_area_kitchen"]
    assert sensor["dev"]["via_device"] == "roost_home-1"
    hub = [d for t, d in docs.items() if t not in kitchen]
    assert len({json.dumps(d["dev"]) for d in hub}) == 1
    assert all(d["dev"]["ids"] == ["roost_home-1"] for d in hub)
    assert all(d["o"]["name"] == "roost" for d in docs.values())
    assert all(d["availability"][0]["topic"] == "roost/home-1/status" for d in docs.values())
    assert LEGACY not in [p.topic for p in client.published]  # nothing to migrate


async def test_the_entity_cap_refuses_new_areas_counted_and_logged_once(
    make_bridge: Callable[..., HaBridge], caplog: pytest.LogCaptureFixture
) -> None:
    static = len(make_bridge().components)
    b = make_bridge(max_entities=static + 5)
    refused = HA_ENTITIES_REFUSED._value.get()
    with caplog.at_level(logging.INFO, logger="hub.homeassistant"):
        await b.on_recorded([recorded("occupancy", "kitchen", "k")])  # 2 entities
        await b.on_recorded([recorded("occupancy", "hall", "h")])  # 2 more: 1 left
        for i in range(100):  # an occupancy area needs 2
            await b.on_recorded([recorded("occupancy", "attic", f"a{i}")])
        await b.on_recorded([recorded("comfort", "attic", "c")])  # 1 fits
    assert len(b.components) == static + 5
    assert "comfort_attic" in b.components
    assert "occupancy_attic" not in b.components
    assert ("occupancy", "attic") not in b.latest  # no memory for areas without an entity
    assert HA_ENTITIES_REFUSED._value.get() - refused == 100
    assert len([r for r in caplog.records if "ha_max_entities" in r.getMessage()]) == 1


async def test_legacy_device_config_is_migrated_before_any_entity_config(
    make_bridge: Callable[..., HaBridge],
) -> None:
    b = make_bridge()
    client = LoopbackClient(b.handle, retained={LEGACY: b'{"dev":{},"o":{},"cmps":{}}'})
    async with connected(b, client):
        await wait_until_async(
            lambda: len(configs(client)) == len(b.components), 5, "every config", interval=0
        )
    legacy = [i for i, p in enumerate(client.published) if p.topic == LEGACY]
    assert [(client.published[i].payload, client.published[i].retain) for i in legacy] == [
        (MIGRATE_PAYLOAD, True),
        (b"", True),
    ]
    first_config = min(
        i
        for i, p in enumerate(client.published)
        if p.topic.endswith("/config") and p.topic != LEGACY
    )
    assert legacy[-1] < first_config
    assert LEGACY not in client.retained


async def test_a_new_session_announces_every_entity_once_more(
    make_bridge: Callable[..., HaBridge],
) -> None:
    b = make_bridge()
    async with connected(b) as first:
        await b.on_recorded([recorded("occupancy", "kitchen", "d1")])
        await wait_until_async(
            lambda: len(configs(first)) == len(b.components), 5, "every config", interval=0
        )
    b.on_disconnect()
    # The broker forgot its retained messages (no persistence): everything again, once.
    async with connected(b) as second:
        await wait_until_async(
            lambda: len(configs(second)) == len(b.components), 5, "every config", interval=0
        )
        # Home Assistant's birth: the configs are retained at the broker; not sent again.
        assert b.handle("homeassistant/status", b"online")
        await b.idle()
    assert sorted(configs(first)) == sorted(configs(second))
