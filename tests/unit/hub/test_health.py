"""Per-model decision health: states, their reasons, metrics and the retained JSON."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from prometheus_client import REGISTRY

from hub.health import DecisionHealth, ModelState, Peer, describe, health_topic
from tests.support.waiting import wait_until_async


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def gauge(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_describe_says_why_in_plain_words() -> None:
    assert describe(ModelState.DECIDING, 3, 0) == "deciding"
    assert describe(ModelState.DECIDING, 3, 12) == "deciding, 12 readings queued"
    assert (
        describe(ModelState.AUDIT_UNAVAILABLE, 12.4, 2400)
        == "audit unavailable for 12 s, 2,400 readings queued"
    )
    assert (
        describe(ModelState.INFERENCE_UNAVAILABLE, 61, 0)
        == "inference unavailable for 61 s, 0 readings queued"
    )
    assert describe(ModelState.MODEL_REFUSED, 5, 1, "NOT_FOUND").startswith(
        "inference refuses the model (NOT_FOUND) for 5 s"
    )


def test_an_outage_is_dated_from_its_first_failure_and_cleared_by_a_success() -> None:
    clock = Clock()
    h = DecisionHealth(["hm_occ"], clock=clock)
    h.queued("hm_occ", 3)
    start = clock.now
    h.peer_failed(Peer.AUDIT)
    clock.now += 10
    h.peer_failed(Peer.AUDIT)  # still the same outage
    [m] = h.models()
    assert m.state is ModelState.AUDIT_UNAVAILABLE
    assert m.since == start
    assert m.detail(clock.now) == "audit unavailable for 10 s, 3 readings queued"
    assert not h.deciding
    h.peer_ok(Peer.AUDIT)
    [m] = h.models()
    assert m.state is ModelState.DECIDING
    assert m.since == clock.now
    assert h.deciding


def test_inference_down_comes_first_and_a_refusal_is_per_model() -> None:
    h = DecisionHealth(["hm_a", "hm_b"], clock=Clock())
    h.peer_failed(Peer.AUDIT)
    h.peer_failed(Peer.INFERENCE)  # nothing reaches audit while inference is down
    assert {m.state for m in h.models()} == {ModelState.INFERENCE_UNAVAILABLE}
    h.peer_ok(Peer.INFERENCE)
    h.peer_ok(Peer.AUDIT)
    h.model_refused("hm_a", "NOT_FOUND")
    states = {m.model: m.state for m in h.models()}
    assert states == {"hm_a": ModelState.MODEL_REFUSED, "hm_b": ModelState.DECIDING}
    h.model_ok("hm_a")
    assert h.deciding


def test_metrics_follow_the_state_and_queue() -> None:
    clock = Clock()
    h = DecisionHealth(["hm_metrics"], clock=clock)
    assert gauge("roost_hub_model_state", model="hm_metrics", state="deciding") == 1
    h.peer_failed(Peer.INFERENCE)
    h.queued("hm_metrics", 7)
    h.queued("hm_metrics", -2)
    assert gauge("roost_hub_model_state", model="hm_metrics", state="deciding") == 0
    assert gauge("roost_hub_model_state", model="hm_metrics", state="inference_unavailable") == 1
    assert gauge("roost_hub_model_state_since_seconds", model="hm_metrics") == clock.now
    assert gauge("roost_hub_model_backlog", model="hm_metrics") == 5
    h.queued("hm_metrics", -50)  # never negative
    assert gauge("roost_hub_model_backlog", model="hm_metrics") == 0


def test_the_document_names_models_states_and_counts_only() -> None:
    clock = Clock()
    h = DecisionHealth(["hm_doc"], clock=clock)
    h.peer_failed(Peer.AUDIT)
    h.queued("hm_doc", 2400)
    clock.now += 12
    doc = h.document("home")
    assert doc["hub_id"] == "home"
    assert doc["deciding"] is False
    m = doc["models"]["hm_doc"]
    assert m["state"] == "audit_unavailable"
    assert m["deciding"] is False
    assert m["for_seconds"] == 12
    assert m["queued"] == 2400
    assert m["detail"] == "audit unavailable for 12 s, 2,400 readings queued"
    assert set(m) == {"state", "deciding", "since", "for_seconds", "queued", "detail"}
    json.dumps(doc)  # serializable as is


async def test_published_on_change_and_refreshed_while_not_deciding() -> None:
    h = DecisionHealth(["hm_pub"], clock=Clock())
    stop = asyncio.Event()
    sent: list[tuple[str, dict[str, object]]] = []
    arrived = asyncio.Event()

    async def publish(topic: str, payload: bytes) -> None:
        sent.append((topic, json.loads(payload)))
        arrived.set()

    async def next_document() -> dict[str, object]:
        arrived.clear()
        await asyncio.wait_for(arrived.wait(), 5)
        return sent[-1][1]

    task = asyncio.create_task(h.publish_loop("home", publish, 0.01, stop))
    first = await next_document()  # at start
    assert sent[0][0] == health_topic("home") == "roost/home/health"
    assert first["deciding"] is True
    h.peer_failed(Peer.INFERENCE)  # a change: published at once
    assert (await next_document())["deciding"] is False
    await next_document()  # and refreshed while not deciding (time and queue grow)
    h.peer_ok(Peer.INFERENCE)
    assert (await next_document())["deciding"] is True
    count = len(sent)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert len(sent) <= count + 1


@pytest.mark.parametrize("peer", list(Peer))
def test_a_success_without_an_outage_changes_nothing(peer: Peer) -> None:
    h = DecisionHealth(["hm_quiet"], clock=Clock())
    h.changed.clear()
    h.peer_ok(peer)
    h.model_ok("hm_quiet")
    assert not h.changed.is_set()  # the normal path publishes nothing


async def test_the_backlog_shown_drains_to_zero_after_an_outage() -> None:
    """Home Assistant shows the last document: after an outage it must not keep showing
    the readings that were queued when the service came back."""
    h = DecisionHealth(["hm_drain"], clock=Clock())
    stop = asyncio.Event()
    sent: list[dict[str, Any]] = []
    arrived = asyncio.Event()

    async def publish(topic: str, payload: bytes) -> None:
        sent.append(json.loads(payload)["models"]["hm_drain"])
        arrived.set()

    task = asyncio.create_task(h.publish_loop("home", publish, 0.01, stop))
    h.queued("hm_drain", 2400)
    h.peer_failed(Peer.AUDIT)
    await wait_until_async(lambda: sent and sent[-1]["state"] == "audit_unavailable", 5, "down")
    h.peer_ok(Peer.AUDIT)  # back, 2,400 readings still to decide
    await wait_until_async(lambda: sent[-1]["state"] == "deciding", 5, "deciding again")
    for _ in range(3):  # catching up: no change of state, only the queue shrinks
        h.queued("hm_drain", -800)
    last = await wait_until_async(
        lambda: sent[-1]["queued"] == 0 and sent[-1], 5, lambda: f"queued 0 (last {sent[-1]})"
    )
    assert last["detail"] == "deciding"
    # Settled (deciding, nothing queued): quiet until the next change.
    arrived.clear()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(arrived.wait(), 0.2)
    stop.set()
    await asyncio.wait_for(task, 5)
