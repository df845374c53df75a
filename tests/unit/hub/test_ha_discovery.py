"""The Roost hub device for Home Assistant: discovery config, commands, settings."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from hub.ha_discovery import (
    COMMANDS,
    HaBridge,
    ModelInfo,
    Settings,
    discovery_topic,
    uninstall_messages,
)
from hub.pipeline import Recorded
from hub.policy import ActionPolicy
from roost.common.v1 import common_pb2
from roost.inference.v1 import inference_service_pb2 as inf_pb

ROUTINE_LABELS = ("away", "asleep", "idle")


class FakeInference:
    pass


def bridge(tmp_path: Path) -> HaBridge:
    return HaBridge(
        hub_id="home-1",
        prefix="homeassistant",
        models=[
            ModelInfo("occupancy", ("vacant", "occupied"), "1.0.0"),
            ModelInfo("routine", ROUTINE_LABELS),
        ],
        settings=Settings(),
        settings_path=tmp_path / "ha_settings.json",
        policy=ActionPolicy(),
        inference=FakeInference(),  # type: ignore[arg-type]
        settle_seconds=0.0,
    )


def recorded(model: str, area: str, label: str, decision_id: str) -> Recorded:
    return Recorded(
        model, area, decision_id, label, 7, f"roost/home-1/decisions/{model}/{area}", b"{}", None
    )


def count(kind: str, outcome: str) -> float:
    return COMMANDS.labels(kind, outcome)._value.get()


def test_device_config_has_one_device_with_static_components(tmp_path: Path) -> None:
    b = bridge(tmp_path)
    config = b.discovery_config()
    assert config["dev"]["ids"] == ["roost_home-1"]
    assert config["dev"]["name"] == "Roost hub"
    assert "o" in config  # device-based discovery requires the origin
    cmps: dict[str, Any] = config["cmps"]
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
    assert discovery_topic("homeassistant", "home-1") == "homeassistant/device/roost_home-1/config"
    json.dumps(config)  # serializable


def test_prediction_components_appear_with_the_first_decision(tmp_path: Path) -> None:
    b = bridge(tmp_path)
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
    assert b.components["routine_home"]["options"] == list(ROUTINE_LABELS)
    assert b.components["routine_home_label"]["p"] == "select"
    # Stable unique ids as the device grows.
    assert all(b.components[k]["unique_id"] == v["unique_id"] for k, v in before.items())


def test_commands_are_validated_and_never_raise(tmp_path: Path) -> None:
    async def go() -> HaBridge:
        b = bridge(tmp_path)
        cmd = "roost/home-1/ha/cmd"
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
        assert b.handle(f"{cmd}/nope", b"PRESS")
        assert b.handle(f"{cmd}/occupancy_threshold", b"1" * 100)
        assert b.handle(f"{cmd}/occupancy_threshold", b"abc")
        assert b.handle(f"{cmd}/occupancy_threshold", b"5")
        assert b.handle(f"{cmd}/learning_mode", b"\xff")
        assert b.handle(f"{cmd}/learning_mode", b"off")
        assert b.handle(f"{cmd}/occupancy_threshold", b"0.8")
        assert b.handle(f"{cmd}/learning_mode", b"paused")
        assert not b.handle("roost/readings/kitchen/temperature", b"21")
        await asyncio.sleep(0.05)
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
    assert not b.training_allowed()
    saved = Settings.load(tmp_path / "ha_settings.json", Settings())
    assert (saved.learning_mode, saved.occupancy_threshold) == ("paused", 0.8)


def test_feedback_sends_the_opposite_label_for_the_latest_decision(tmp_path: Path) -> None:
    sent: list[Any] = []

    class Pers:
        async def RecordLabel(self, request: Any, timeout: float) -> Any:
            sent.append(request)

    async def go() -> None:
        b = bridge(tmp_path)
        b.personalization = Pers()  # type: ignore[assignment]
        await b.on_recorded([recorded("occupancy", "kitchen", "vacant", "d1")])
        await b.on_recorded([recorded("occupancy", "kitchen", "occupied", "d2")])
        b.handle("roost/home-1/ha/cmd/occupancy_kitchen_wrong", b"PRESS")
        await b.on_recorded([recorded("routine", "home", "idle", "d3")])
        b.handle("roost/home-1/ha/cmd/routine_home_label", b"asleep")
        await asyncio.sleep(0.05)
        b.handle("roost/home-1/ha/cmd/routine_home_wrong", b"PRESS")
        await asyncio.sleep(0.05)

    asyncio.run(go())
    assert [(r.decision_id, r.label) for r in sent] == [("d2", "vacant"), ("d3", "asleep")]


def test_uninstall_clears_the_device_first() -> None:
    messages = uninstall_messages("homeassistant", "home-1", ["occupancy"])
    assert messages[0] == ("homeassistant/device/roost_home-1/config", b"")
    assert all(payload == b"" for _, payload in messages)
    assert ("roost/home-1/ha/state/occupancy_update", b"") in messages


def test_drift_starts_personalization_once_per_cooldown_unless_paused(tmp_path: Path) -> None:
    started: list[Any] = []

    class Pers:
        async def StartTraining(self, request: Any, timeout: float) -> Any:
            started.append((request.model_name, request.target_epsilon))

    async def go() -> None:
        b = bridge(tmp_path)
        b.personalization = Pers()  # type: ignore[assignment]
        b.drift_retrain_seconds = 3600.0
        b.drift_retrain_epsilon = 0.5
        for _ in range(3):  # drifting on every poll: one run per cooldown
            b._maybe_retrain("occupancy")
        b._maybe_retrain("comfort")  # not personalizable
        await asyncio.sleep(0.05)
        b.settings.learning_mode = "paused"
        b._maybe_retrain("routine")
        await asyncio.sleep(0.05)

    asyncio.run(go())
    assert started == [("occupancy", 0.5)]


def test_drift_needs_enough_live_samples(tmp_path: Path) -> None:
    def status(samples: int) -> inf_pb.GetModelStatusResponse:
        return inf_pb.GetModelStatusResponse(
            active=inf_pb.RoleHealth(
                model=common_pb2.ModelRef(name="occupancy", version="1.0.0"), loaded=True
            ),
            drift_monitored=True,
            drift=[inf_pb.FeatureDrift(feature="co2", psi=0.9, ks=0.5, samples=samples)],
        )

    class Inference:
        def __init__(self, samples: int) -> None:
            self.samples = samples

        async def GetModelStatus(self, request: Any, timeout: float) -> Any:
            return status(self.samples)

    for samples, expected in ((12, "OFF"), (5000, "ON")):
        b = bridge(tmp_path)
        b.inference = Inference(samples)  # type: ignore[assignment]
        asyncio.run(b._poll_model("occupancy"))
        payload, _ = b._outbox["roost/home-1/ha/state/occupancy_status"]
        assert json.loads(payload)["drift"] == expected, samples
