"""The bridge: entities appear with decisions, commands are validated (and floods stay
quiet), feedback, Home Assistant's birth, the bounded outbox."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hub.homeassistant.bridge import HaBridge
from hub.homeassistant.metrics import COMMANDS
from hub.homeassistant.settings import Settings
from hub.pipeline import Recorded

ROUTINE_LABELS = ["away", "asleep", "idle"]
CMD = "roost/home-1/ha/cmd"


def recorded(model: str, area: str, label: str, decision_id: str) -> Recorded:
    return Recorded(
        model, area, decision_id, label, 7, f"roost/home-1/decisions/{model}/{area}", b"{}", None
    )


def count(kind: str, outcome: str) -> float:
    return COMMANDS.labels(kind, outcome)._value.get()


def test_the_static_components(make_bridge: Callable[[], HaBridge]) -> None:
    cmps: dict[str, Any] = make_bridge().components
    assert {"privacy_budget", "learning_mode", "occupancy_threshold", "drift_psi_alert"} <= set(
        cmps
    )
    assert {"occupancy_drift", "occupancy_health", "occupancy_update", "occupancy_rollback"} <= set(
        cmps
    )
    assert cmps["learning_mode"]["options"] == ["learning", "paused", "local-only"]
    assert all(c["unique_id"] == f"roost_home-1_{k}" for k, c in cmps.items())
    assert all(c["availability"][0]["topic"] == "roost/home-1/status" for c in cmps.values())
    # The budget is unavailable unless personalization answers too.
    assert cmps["privacy_budget"]["availability_mode"] == "all"
    assert cmps["occupancy_train"]["command_topic"] == f"{CMD}/occupancy_train"


def test_prediction_components_appear_with_the_first_decision(
    make_bridge: Callable[[], HaBridge],
) -> None:
    b = make_bridge()
    assert "occupancy_kitchen" not in b.components
    asyncio.run(b.on_recorded([recorded("occupancy", "kitchen", "vacant", "d1")]))
    before = dict(b.components)
    sensor = b.components["occupancy_kitchen"]
    assert sensor["p"] == "binary_sensor"
    assert sensor["device_class"] == "occupancy"
    assert sensor["state_topic"] == "roost/home-1/decisions/occupancy/kitchen"
    assert "why" in sensor["json_attributes_template"]
    assert "audit_index" in sensor["json_attributes_template"]
    assert b.components["occupancy_kitchen_wrong"]["p"] == "button"
    asyncio.run(b.on_recorded([recorded("routine", "home", "idle", "d2")]))
    assert b.components["routine_home"]["options"] == ROUTINE_LABELS
    assert b.components["routine_home_label"]["p"] == "select"
    # Stable unique ids as the device grows.
    assert all(b.components[k]["unique_id"] == v["unique_id"] for k, v in before.items())


def test_each_served_model_has_a_decisions_sensor_and_the_hub_one_problem_sensor(
    make_bridge: Callable[[], HaBridge],
) -> None:
    cmps: dict[str, Any] = make_bridge().components
    health = {k: c for k, c in cmps.items() if c.get("state_topic") == "roost/home-1/health"}
    assert set(health) == {"decisions", "decisions_occupancy", "decisions_routine"}
    assert health["decisions"]["p"] == "binary_sensor"
    assert health["decisions_routine"]["name"] == "Routine decisions"
    assert health["decisions_occupancy"]["unique_id"] == "roost_home-1_decisions_occupancy"
    assert all(c["availability"] == [{"topic": "roost/home-1/status"}] for c in health.values())


@pytest.mark.parametrize("area", ["decisions", "decisions_occupancy", "occupancy"])
def test_an_area_cannot_take_over_a_decisions_entity(
    make_bridge: Callable[[], HaBridge], area: str
) -> None:
    """Any MQTT client names areas; a prediction's key is "<model>_<area>"."""
    b = make_bridge()
    before = {k: dict(c) for k, c in b.components.items() if k.startswith("decisions")}
    asyncio.run(b.on_recorded([recorded("occupancy", area, "vacant", "d1")]))
    asyncio.run(b.on_recorded([recorded("routine", area, "idle", "d2")]))
    assert {k: c for k, c in b.components.items() if k.startswith("decisions")} == before
    for model in ("occupancy", "routine"):  # and the area got its own prediction entity
        topic = b.components[f"{model}_{area}"]["state_topic"]
        assert topic == f"roost/home-1/decisions/{model}/{area}"


def test_commands_are_validated_and_never_raise(
    make_bridge: Callable[[], HaBridge], tmp_path: Path
) -> None:
    async def go() -> HaBridge:
        b = make_bridge()
        before = {
            k: count(*k)
            for k in (
                ("unknown", "unknown"),
                ("number", "oversized"),
                ("number", "malformed"),
                ("select", "malformed"),
                ("number", "accepted"),
            )
        }
        assert b.handle(f"{CMD}/nope", b"PRESS")
        assert b.handle(f"{CMD}/occupancy_threshold", b"1" * 100)
        assert b.handle(f"{CMD}/occupancy_threshold", b"abc")
        assert b.handle(f"{CMD}/occupancy_threshold", b"5")
        assert b.handle(f"{CMD}/learning_mode", b"\xff")
        assert b.handle(f"{CMD}/learning_mode", b"off")
        assert b.handle(f"{CMD}/occupancy_threshold", b"0.8")
        assert b.handle(f"{CMD}/learning_mode", b"paused")
        assert not b.handle("roost/readings/kitchen/temperature", b"21")
        await b.idle()
        after = {k: count(*k) for k in before}
        assert {k: after[k] - before[k] for k in before} == {
            ("unknown", "unknown"): 1,
            ("number", "oversized"): 1,
            ("number", "malformed"): 2,
            ("select", "malformed"): 2,
            ("number", "accepted"): 1,
        }
        return b

    b = asyncio.run(go())
    assert b.policy.occupancy_threshold == 0.8
    assert not b.settings.training_allowed()
    saved = Settings.load(tmp_path / "ha_settings.json", Settings())
    assert (saved.learning_mode, saved.occupancy_threshold) == ("paused", 0.8)
    # The new settings go out retained.
    assert b._outbox["roost/home-1/ha/state/learning_mode"] == (b"paused", True)
    assert b._outbox["roost/home-1/ha/state/occupancy_threshold"] == (b"0.8", True)


def test_feedback_sends_the_opposite_label_for_the_latest_decision(
    make_bridge: Callable[[], HaBridge],
) -> None:
    sent: list[Any] = []

    class Pers:
        async def RecordLabel(self, request: Any, timeout: float) -> Any:
            sent.append(request)

    async def go() -> None:
        b = make_bridge()
        b.coordinator.personalization = Pers()  # type: ignore[assignment]
        await b.on_recorded([recorded("occupancy", "kitchen", "vacant", "d1")])
        await b.on_recorded([recorded("occupancy", "kitchen", "occupied", "d2")])
        b.handle(f"{CMD}/occupancy_kitchen_wrong", b"PRESS")
        await b.on_recorded([recorded("routine", "home", "idle", "d3")])
        b.handle(f"{CMD}/routine_home_label", b"asleep")
        await b.idle()
        b.handle(f"{CMD}/routine_home_wrong", b"PRESS")
        await b.idle()

    asyncio.run(go())
    assert [(r.decision_id, r.label) for r in sent] == [("d2", "vacant"), ("d3", "asleep")]


def test_a_flood_of_unknown_commands_is_counted_and_logged_a_few_times(
    make_bridge: Callable[[], HaBridge], caplog: pytest.LogCaptureFixture
) -> None:
    b = make_bridge()
    before = count("unknown", "unknown")
    with caplog.at_level(logging.INFO):
        for i in range(10_000):
            assert b.handle(f"{CMD}/no_such_entity_{i}", b"PRESS")
    assert count("unknown", "unknown") - before == 10_000
    lines = [r for r in caplog.records if r.name.startswith("hub.")]
    assert 1 <= len(lines) <= 3, [r.getMessage() for r in lines]
    assert "no_such_entity_0" in lines[0].getMessage()  # names the entity, not the payload
    assert "PRESS" not in lines[0].getMessage()


def test_home_assistant_birth_sends_the_states_and_latest_decisions_again(
    make_bridge: Callable[[], HaBridge],
) -> None:
    async def go() -> HaBridge:
        b = make_bridge()
        await b.on_recorded([recorded("occupancy", "kitchen", "vacant", "d1")])
        b._outbox.clear()
        assert b.handle("homeassistant/status", b"online")
        await b.idle()
        return b

    b = asyncio.run(go())
    assert b._outbox["roost/home-1/ha/state/learning_mode"] == (b"learning", True)
    # The discovery configs are retained at the broker: not in the outbox again.
    assert not [t for t in b._outbox if t.startswith("homeassistant/")]
    # The latest decision again, same payload (same decision id), not retained.
    assert b._outbox["roost/home-1/decisions/occupancy/kitchen"] == (b"{}", False)


def test_outbox_keeps_the_latest_per_topic_and_is_bounded(
    make_bridge: Callable[[], HaBridge],
) -> None:
    b = make_bridge()
    b._outbox.clear()
    b._buffer_topics = 2
    b._queue("a", b"1", True)
    b._queue("a", b"2", True)
    b._queue("b", b"1", True)
    b._queue("c", b"1", True)  # full: dropped (counted)
    assert b._outbox == {"a": (b"2", True), "b": (b"1", True)}
