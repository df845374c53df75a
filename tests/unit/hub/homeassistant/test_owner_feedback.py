"""Visible feedback: a correction shows on the entity and in the logbook; a failed
button raises a notification with the reason (and a later success dismisses it).

A fake HA client here; ``tests/integration/test_home_assistant_feedback.py`` shows the
same with a real Home Assistant."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from hub.homeassistant.bridge import HaBridge
from hub.homeassistant.client import HaUnavailable
from hub.homeassistant.correction import Latest, corrected
from hub.homeassistant.entities import prediction_component
from hub.homeassistant.metrics import HA_NOTICES
from hub.pipeline import Recorded

CMD = "roost/home-1/ha/cmd"
TOPIC = "roost/home-1/decisions/occupancy/kitchen"
SECRET = "co2=1234 ppm"


class FakeHa:
    """Records service calls; fails them while ``down``."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, str]]] = []
        self.down = False

    def call(self, domain: str, service: str, data: dict[str, str]) -> None:
        if self.down:
            raise HaUnavailable(f"{domain}.{service} failed: ConnectionError")
        self.calls.append((domain, service, dict(data)))


class RpcError(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=SECRET)


class Update:
    """Rollback fails with ``code`` until ``code`` is None."""

    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = grpc.StatusCode.FAILED_PRECONDITION

    async def Rollback(self, request: Any, timeout: float) -> Any:
        if self.code is not None:
            raise RpcError(self.code)

    async def ListVersions(self, request: Any, timeout: float) -> Any:
        raise RpcError(grpc.StatusCode.UNAVAILABLE)


def decision(label: str, decision_id: str) -> Recorded:
    doc = {"decision_id": decision_id, "label": label, "area": "kitchen", "audit_index": 7}
    return Recorded(
        "occupancy", "kitchen", decision_id, label, 7, TOPIC, json.dumps(doc).encode(), None
    )


def test_a_correction_shows_on_the_entity_and_in_the_logbook(
    make_bridge: Callable[..., HaBridge],
) -> None:
    ha = FakeHa()

    class Pers:
        async def RecordLabel(self, request: Any, timeout: float) -> Any:
            return None

    async def go() -> HaBridge:
        b = make_bridge(ha_client=ha)
        b.coordinator.personalization = Pers()  # type: ignore[assignment]
        await b.on_recorded([decision("vacant", "d1")])
        b.handle(f"{CMD}/occupancy_kitchen_wrong", b"PRESS")
        await b.idle()
        return b

    b = asyncio.run(go())
    payload, retain = b._outbox[TOPIC]
    doc = json.loads(payload)
    # Same decision (consumers dedupe by id), the audited label kept, the owner's shown.
    assert (doc["decision_id"], doc["label"], doc["audit_index"]) == ("d1", "vacant", 7)
    assert (doc["feedback"], doc["corrected_label"]) == ("corrected by you", "occupied")
    assert not retain
    # Republished after an HA restart as corrected, until a newer decision replaces it.
    assert b.latest[("occupancy", "kitchen")].payload == payload
    assert ha.calls == [
        (
            "logbook",
            "log",
            {
                "name": "Roost hub",
                "message": "recorded your correction of occupancy in kitchen: it was"
                " occupied, not vacant. Roost learns from it.",
            },
        )
    ]


def test_a_correction_that_was_not_recorded_is_not_shown(
    make_bridge: Callable[..., HaBridge],
) -> None:
    ha = FakeHa()

    async def go() -> HaBridge:
        b = make_bridge(ha_client=ha)  # no personalization service
        await b.on_recorded([decision("vacant", "d1")])
        b.handle(f"{CMD}/occupancy_kitchen_wrong", b"PRESS")
        await b.idle()
        return b

    b = asyncio.run(go())
    assert TOPIC not in b._outbox or "feedback" not in json.loads(b._outbox[TOPIC][0])
    [(domain, service, data)] = ha.calls
    assert (domain, service) == ("persistent_notification", "create")
    assert data["notification_id"] == "roost_home-1_occupancy_kitchen_wrong"
    assert "the personalization service is not deployed" in data["message"]


def test_a_failed_button_raises_a_notification_and_a_success_dismisses_it(
    make_bridge: Callable[..., HaBridge],
) -> None:
    ha = FakeHa()
    update = Update()

    async def press(b: HaBridge) -> None:
        b.handle(f"{CMD}/occupancy_rollback", b"PRESS")
        await b.idle()

    async def go() -> None:
        b = make_bridge(ha_client=ha, update=update)
        await press(b)
        await press(b)  # the same notification again (replaced in HA, one id)
        update.code = None
        await press(b)  # success: dismissed
        await press(b)  # nothing raised: nothing to dismiss

    asyncio.run(go())
    ids = {data["notification_id"] for _, _, data in ha.calls}
    assert ids == {"roost_home-1_occupancy_rollback"}
    assert [s for _, s, _ in ha.calls] == ["create", "create", "dismiss"]
    _, _, data = ha.calls[0]
    assert data["title"] == "Roost: Rolling back occupancy failed"
    assert data["message"] == (
        "Rolling back occupancy failed: update service: Rollback failed (FAILED_PRECONDITION)."
    )
    assert SECRET not in json.dumps(ha.calls)


def test_learn_now_while_paused_says_why(make_bridge: Callable[..., HaBridge]) -> None:
    ha = FakeHa()

    async def go() -> None:
        b = make_bridge(ha_client=ha)
        b.settings.learning_mode = "paused"
        b.handle(f"{CMD}/occupancy_train", b"PRESS")
        await b.idle()

    asyncio.run(go())
    [(_, _, data)] = ha.calls
    assert "learning is paused" in data["message"]


@pytest.mark.parametrize("down", [True, False])
def test_without_home_assistant_a_failure_is_counted_never_raised(
    make_bridge: Callable[..., HaBridge], down: bool, tmp_path: Path
) -> None:
    ha = FakeHa()
    ha.down = down
    outcome = "failed" if down else "sent"
    before = HA_NOTICES.labels("notification", outcome)._value.get()
    unconfigured = HA_NOTICES.labels("notification", "unconfigured")._value.get()

    async def go() -> None:
        for client in (ha, None):
            b = make_bridge(ha_client=client, update=Update())
            b.handle(f"{CMD}/occupancy_rollback", b"PRESS")
            await b.idle()

    asyncio.run(go())
    assert HA_NOTICES.labels("notification", outcome)._value.get() == before + 1
    assert HA_NOTICES.labels("notification", "unconfigured")._value.get() == unconfigured + 1


def test_the_entity_shows_the_owners_label_once_corrected() -> None:
    env = ImmutableSandboxedEnvironment()
    doc = {"label": "vacant", "model": {"version": "1.0.0"}, "confidence": 0.9, "why": ""}
    doc |= {"decision_id": "d1", "audit_index": 7, "action": "publish", "decided_at": "t"}
    latest = Latest("d1", "vacant", TOPIC, json.dumps(doc).encode())
    for model, labels, before, after in (
        ("occupancy", ("vacant", "occupied"), "OFF", "ON"),
        ("routine", ("away", "idle"), "vacant", "occupied"),
    ):
        c = prediction_component("home-1", model, "kitchen", labels)
        for shown, expected, feedback in (
            (latest, before, None),
            (corrected(latest, "occupied"), after, "corrected by you"),
        ):
            value_json = json.loads(shown.payload)
            assert env.from_string(c["value_template"]).render(value_json=value_json) == expected
            attributes = env.from_string(c["json_attributes_template"]).render(
                value_json=value_json
            )
            assert json.loads(attributes)["feedback"] == feedback
