"""Roost in a REAL Home Assistant (2025.4.4) with a real mosquitto and real Roost services.

One module-scoped HA (``ha_env`` in conftest) with template sensors that carry a
device_class and an area, and one Roost stack (audit, inference, update, hub) on HA's
broker. The personalization service is not written yet: a fake gRPC personalization
server (mTLS with the stack's certificates) records what the hub sends and serves a
privacy budget.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.request
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from home_assistant import HomeAssistant
from mqtt_helpers import audit_stub, collect_decisions, publish

from hub import mqtt
from hub.cli import main
from hub.stack import Stack, free_port
from hub.topics import reading_topic
from roost.audit.v1 import audit_service_pb2 as audit_pb
from roost.personalization.v1 import personalization_service_pb2 as pers_pb
from roost.personalization.v1 import personalization_service_pb2_grpc as pers_grpc
from services.kit.auth import Role

pytestmark = [pytest.mark.integration, pytest.mark.home_assistant, pytest.mark.timeout(900)]

HUB_ID = "hatest"
KINDS = {
    "temperature": ("°C", 5, 35),
    "humidity": ("%", 0, 100),
    "illuminance": ("lx", 0, 2000),
    "carbon_dioxide": ("ppm", 0, 5000),
}
# Distinctive values (searched for in logs): vacant and occupied rooms.
VACANT = {"temperature": 20.3, "humidity": 25.1, "illuminance": 0.0, "carbon_dioxide": 441.7}
OCCUPIED = {"temperature": 22.6, "humidity": 27.3, "illuminance": 523.0, "carbon_dioxide": 953.1}
ROOMS = {"kitchen": "Kitchen", "living_room": "Living Room"}


def _ha_options() -> dict[str, Any]:
    numbers: dict[str, Any] = {}
    sensors: list[dict[str, Any]] = []
    areas: dict[str, str] = {}
    for room, area_name in ROOMS.items():
        for kind, (unit, lo, hi) in KINDS.items():
            key = f"{room}_{kind}_raw"
            numbers[key] = {
                "name": f"{room} {kind} raw",
                "min": lo,
                "max": hi,
                "step": 0.1,
                "initial": lo + 1,
                "mode": "box",
                "unit_of_measurement": unit,
            }
            sensors.append(
                {
                    "name": f"{area_name} {kind.replace('_', ' ')}",
                    "unique_id": f"roosttest_{room}_{kind}",
                    "device_class": kind,
                    "state_class": "measurement",
                    "unit_of_measurement": unit,
                    "state": f"{{{{ states('input_number.{key}') }}}}",
                }
            )
            areas[f"sensor.{room}_{kind.replace('_', '_')}"] = area_name
    areas["input_boolean.kitchen_light"] = "Kitchen"
    areas["input_boolean.living_room_light"] = "Living Room"
    return {
        "extra_config": {
            "input_number": numbers,
            "input_boolean": {
                "kitchen_light": {"name": "Kitchen light"},
                "living_room_light": {"name": "Living room light"},
                "kitchen_presence": {"name": "Kitchen presence"},
            },
            "template": [{"sensor": sensors}],
        },
        "areas": areas,
    }


HA_OPTIONS = _ha_options()
ACTIONS = (
    "occupancy.kitchen:vacant=input_boolean.turn_off:input_boolean.kitchen_light,"
    "suggest occupancy.living_room:vacant=input_boolean.turn_off:input_boolean.living_room_light"
)
E = "roost_hub"  # entity id prefix: the device name "Roost hub"


class FakePersonalization(pers_grpc.PersonalizationServiceServicer):
    def __init__(self) -> None:
        self.labels: list[pers_pb.RecordLabelRequest] = []

    def RecordLabel(self, request: pers_pb.RecordLabelRequest, context: Any) -> Any:
        self.labels.append(request)
        return pers_pb.RecordLabelResponse(example_id=f"ex-{len(self.labels)}")

    def GetPrivacyBudget(self, request: pers_pb.GetPrivacyBudgetRequest, context: Any) -> Any:
        return pers_pb.GetPrivacyBudgetResponse(
            budget=pers_pb.PrivacyBudget(
                scope="household", epsilon_limit=3.0, epsilon_spent=0.75, delta=1e-5
            )
        )


@pytest.fixture(scope="module")
def roost(
    ha_env: tuple[Stack, HomeAssistant], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, FakePersonalization]]:
    _, ha = ha_env
    home = tmp_path_factory.mktemp("roost")
    stack = Stack(home, hub_id=HUB_ID)
    stack.broker_port = ha.broker_port
    fake = FakePersonalization()
    certs = stack.certs_dir
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pers_grpc.add_PersonalizationServiceServicer_to_server(fake, server)
    creds = grpc.ssl_server_credentials(
        [
            (
                (certs / "personalization-key.pem").read_bytes(),
                (certs / "personalization.pem").read_bytes(),
            )
        ],
        root_certificates=(certs / "ca.pem").read_bytes(),
        require_client_auth=True,
    )
    port = free_port()
    server.add_secure_port(f"127.0.0.1:{port}", creds)
    server.start()
    token = home / "ha-token"
    token.write_text(ha.token)
    try:
        stack.start_service(Role.AUDIT)
        stack.start_service(Role.INFERENCE)
        stack.start_service(Role.UPDATE)
        stack.start_hub(
            {
                "ROOST_HUB_PERSONALIZATION_TARGET": f"127.0.0.1:{port}",
                "ROOST_HUB_HA_URL": ha.url,
                "ROOST_HUB_HA_TOKEN_FILE": str(token),
                "ROOST_HUB_HA_MAPPING": "auto",
                "ROOST_HUB_STATESTREAM_BASE": ha.statestream_base,
                "ROOST_HUB_HA_POLL_SECONDS": "1",
                "ROOST_HUB_HA_ACTIONS": ACTIONS,
            }
        )
        yield stack, fake
    finally:
        stack.stop()
        server.stop(0)


def metrics(stack: Stack) -> str:
    port = stack.procs["hub"].info["metrics_port"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text: str = r.read().decode()
    return text


def metric(stack: Stack, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    total = 0.0
    for line in metrics(stack).splitlines():
        m = re.match(r"^([a-z_]+)(?:\{(.*)\})? (\S+)$", line)
        if m and m.group(1) == name:
            have = ",".join(sorted((m.group(2) or "").split(",")))
            if not want or all(p in have.split(",") for p in want.split(",")):
                total += float(m.group(3))
    return total


def set_room(ha: HomeAssistant, room: str, values: dict[str, float]) -> None:
    for kind, value in values.items():
        ha.call_service(
            "input_number",
            "set_value",
            {"entity_id": f"input_number.{room}_{kind}_raw", "value": value},
        )


def wait(predicate: Any, timeout: float = 20, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out: {what}")


async def get_decision(stack: Stack, decision_id: str) -> audit_pb.LogEntry:
    stub = audit_stub(stack)
    resp = await stub.GetDecision(audit_pb.GetDecisionRequest(decision_id=decision_id), timeout=5)
    return resp.entry


def test_device_and_entities_appear(
    ha: HomeAssistant, roost: tuple[Stack, FakePersonalization]
) -> None:
    learning = ha.wait_state(f"select.{E}_learning_mode", lambda s: s["state"] == "learning")
    assert learning["attributes"]["options"] == ["learning", "paused", "local-only"]
    threshold = ha.wait_state(f"number.{E}_occupancy_threshold", lambda s: s["state"] == "0.5")
    assert threshold["attributes"]["friendly_name"] == "Roost hub Occupancy threshold"
    budget = ha.wait_state(f"sensor.{E}_privacy_budget_spent", lambda s: s["state"] == "0.75")
    assert budget["attributes"]["epsilon_limit"] == 3.0
    assert budget["attributes"]["unit_of_measurement"] == "ε"
    drift = ha.wait_state(f"binary_sensor.{E}_occupancy_drift", lambda s: s["state"] == "off")
    assert drift["attributes"]["device_class"] == "problem"
    ha.wait_state(f"binary_sensor.{E}_occupancy_model_health", lambda s: s["state"] == "off")
    update = ha.wait_state(
        f"update.{E}_occupancy_model", lambda s: s["attributes"].get("installed_version")
    )
    assert update["attributes"]["installed_version"] == "1.0.0"
    assert update["state"] == "off"  # latest == installed: no update pending
    ha.wait_state(f"button.{E}_roll_back_occupancy")
    devices = [d for d in ha.device_registry() if ["mqtt", f"roost_{HUB_ID}"] in d["identifiers"]]
    assert len(devices) == 1
    assert (devices[0]["name"], devices[0]["manufacturer"]) == ("Roost hub", "Roost")
    registry = ha.entity_registry()
    ours = {e for e, r in registry.items() if r["device_id"] == devices[0]["id"]}
    assert f"select.{E}_learning_mode" in ours
    assert all(registry[e]["unique_id"].startswith(f"roost_{HUB_ID}_") for e in ours)


async def test_statestream_decision_allowed_and_blocked_actions(
    ha: HomeAssistant, roost: tuple[Stack, FakePersonalization]
) -> None:
    stack, _ = roost
    for light in ("kitchen_light", "living_room_light"):
        ha.call_service("input_boolean", "turn_on", {"entity_id": f"input_boolean.{light}"})
    started = time.time()
    # Kitchen: HA sensors (area Kitchen, device_class) -> statestream -> auto mapping.
    await asyncio.to_thread(set_room, ha, "kitchen", VACANT)
    sensor = f"binary_sensor.{E}_occupancy_kitchen"
    state = await asyncio.to_thread(
        ha.wait_state, sensor, lambda s: s["state"] == "off" and "why" in s["attributes"], 30
    )
    attrs = state["attributes"]
    assert attrs["device_class"] == "occupancy"
    assert attrs["model_version"] == "1.0.0"
    assert attrs["why"].startswith("mostly ")
    assert 0.5 <= attrs["confidence"] <= 1.0
    assert isinstance(attrs["audit_index"], int)
    # The allowed action: the audit record first (ALLOWED), then HA switched the light off.
    light = await asyncio.to_thread(
        ha.wait_state, "input_boolean.kitchen_light", lambda s: s["state"] == "off", 20
    )
    entry = await get_decision(stack, attrs["decision_id"])
    assert entry.decision.action == "input_boolean.turn_off"
    assert entry.decision.policy.verdict == audit_pb.POLICY_VERDICT_ALLOWED
    assert entry.decision.policy.policy_id == "ha-allow-list:occupancy.kitchen:vacant"
    assert entry.decision.actor == audit_pb.ACTOR_AUTOMATIC
    assert entry.appended_at.ToDatetime().timestamp() <= time.time()
    logbook = await asyncio.to_thread(
        wait,
        lambda: [e for e in ha.logbook("input_boolean.kitchen_light") if e.get("state") == "off"],
        15,
        "logbook entry",
    )
    assert logbook[-1]["entity_id"] == "input_boolean.kitchen_light"
    assert light["context"]["id"]
    assert metric(stack, "roost_hub_ha_actions_total", outcome="called") >= 1
    # Living room: a "suggest" rule: recorded BLOCKED, never reaches HA.
    await asyncio.to_thread(set_room, ha, "living_room", VACANT)
    living = await asyncio.to_thread(
        ha.wait_state,
        f"binary_sensor.{E}_occupancy_living_room",
        lambda s: s["state"] == "off" and "decision_id" in s["attributes"],
        30,
    )
    entry = await get_decision(stack, living["attributes"]["decision_id"])
    assert entry.decision.policy.verdict == audit_pb.POLICY_VERDICT_BLOCKED
    assert entry.decision.action == "input_boolean.turn_off"
    await asyncio.sleep(2)
    assert ha.state("input_boolean.living_room_light")["state"] == "on"  # type: ignore[index]
    assert metric(stack, "roost_hub_ha_actions_total", outcome="blocked") >= 1
    assert time.time() - started < 60


async def test_was_wrong_button_records_a_label(
    ha: HomeAssistant, roost: tuple[Stack, FakePersonalization]
) -> None:
    _, fake = roost
    sensor = ha.state(f"binary_sensor.{E}_occupancy_kitchen")
    assert sensor is not None
    decision_id = sensor["attributes"]["decision_id"]
    await asyncio.to_thread(
        ha.call_service, "button", "press", {"entity_id": f"button.{E}_occupancy_kitchen_was_wrong"}
    )
    await asyncio.to_thread(wait, lambda: fake.labels, 10, "RecordLabel")
    label = fake.labels[-1]
    assert (label.decision_id, label.label, label.source) == (
        decision_id,
        "occupied",  # the model said vacant: the opposite
        pers_pb.LABEL_SOURCE_FEEDBACK,
    )


async def test_commands_are_validated_and_settings_persist(
    ha: HomeAssistant, roost: tuple[Stack, FakePersonalization]
) -> None:
    stack, _ = roost
    base = f"roost/{HUB_ID}/ha/cmd"
    async with mqtt.client("127.0.0.1", ha.broker_port) as client:
        for topic, payload in (
            (f"{base}/no_such_entity", b"PRESS"),
            (f"{base}/occupancy_threshold", b"9" * 500),
            (f"{base}/occupancy_threshold", b"abc"),
            (f"{base}/occupancy_threshold", b"7.5"),
            (f"{base}/learning_mode", b"\xff\xfe"),
            (f"{base}/learning_mode", b"forever"),
            (f"{base}/occupancy_rollback", b"NOPE"),
        ):
            await client.publish(topic, payload, qos=1)
    await asyncio.to_thread(
        ha.call_service,
        "number",
        "set_value",
        {"entity_id": f"number.{E}_occupancy_threshold", "value": 0.7},
    )
    await asyncio.to_thread(
        ha.call_service,
        "select",
        "select_option",
        {"entity_id": f"select.{E}_learning_mode", "option": "paused"},
    )
    await asyncio.to_thread(
        ha.wait_state, f"select.{E}_learning_mode", lambda s: s["state"] == "paused"
    )
    await asyncio.to_thread(
        ha.wait_state, f"number.{E}_occupancy_threshold", lambda s: s["state"] == "0.7"
    )
    await asyncio.to_thread(
        ha.call_service, "button", "press", {"entity_id": f"button.{E}_learn_now_occupancy"}
    )
    await asyncio.to_thread(
        wait,
        lambda: metric(stack, "roost_hub_ha_commands_total", outcome="refused") >= 1,
        10,
        "training refused while paused",
    )
    assert metric(stack, "roost_hub_ha_commands_total", kind="unknown", outcome="unknown") == 1
    assert metric(stack, "roost_hub_ha_commands_total", kind="number", outcome="oversized") == 1
    assert metric(stack, "roost_hub_ha_commands_total", kind="number", outcome="malformed") == 2
    assert metric(stack, "roost_hub_ha_commands_total", kind="select", outcome="malformed") == 2
    assert metric(stack, "roost_hub_ha_commands_total", kind="button", outcome="malformed") == 1
    settings = json.loads((stack.home / "data" / "hub" / "ha_settings.json").read_text())
    assert (settings["learning_mode"], settings["occupancy_threshold"]) == ("paused", 0.7)
    assert stack.procs["hub"].alive()
    await asyncio.to_thread(
        ha.call_service,
        "select",
        "select_option",
        {"entity_id": f"select.{E}_learning_mode", "option": "learning"},
    )
    await asyncio.to_thread(
        ha.call_service,
        "number",
        "set_value",
        {"entity_id": f"number.{E}_occupancy_threshold", "value": 0.5},
    )


async def test_home_assistant_outage_catches_up(
    ha: HomeAssistant, roost: tuple[Stack, FakePersonalization]
) -> None:
    stack, _ = roost
    failed_before = metric(stack, "roost_hub_ha_actions_total", outcome="failed")
    await asyncio.to_thread(ha.stop)
    now = time.time()
    # HA is away: readings still arrive over MQTT (a device publishing directly).
    async with collect_decisions(stack) as decisions:
        messages = [
            (reading_topic("kitchen", k), json.dumps({"value": v, "ts": now}).encode())
            for k, v in OCCUPIED.items()
        ]
        await publish(stack, messages)
        await decisions.wait_for(1, timeout=15)
        messages = [
            (reading_topic("kitchen", k), json.dumps({"value": v, "ts": now + 1}).encode())
            for k, v in VACANT.items()
        ]
        await publish(stack, messages)
        await asyncio.to_thread(
            wait,
            lambda: [d for d in decisions.items if d["label"] == "vacant"],
            15,
            "a vacant decision",
        )
        await decisions.wait_quiet(quiet=1.0)
    kitchen = [d for d in decisions.items if d["area"] == "kitchen"]
    last = kitchen[-1]
    assert last["label"] == "vacant", [(d["label"], d["trigger_id"]) for d in kitchen]
    # The change to vacant fired the allow-listed action (later decisions: unchanged).
    assert [d["policy"]["verdict"] for d in kitchen].count("allowed") == 1
    # The allowed action could not reach HA: bounded retries, then counted as failed.
    await asyncio.to_thread(
        wait,
        lambda: metric(stack, "roost_hub_ha_actions_total", outcome="failed") > failed_before,
        20,
        "failed action counted",
    )
    await asyncio.to_thread(ha.restart)
    state = await asyncio.to_thread(
        ha.wait_state,
        f"binary_sensor.{E}_occupancy_kitchen",
        lambda s: s["attributes"].get("decision_id") == last["decision_id"],
        30,
    )
    assert state["state"] == "off"
    assert stack.procs["hub"].alive()


async def test_broker_outage_catches_up(
    ha_env: tuple[Stack, HomeAssistant], roost: tuple[Stack, FakePersonalization]
) -> None:
    broker, ha = ha_env
    stack, _ = roost
    before = ha.state(f"binary_sensor.{E}_occupancy_kitchen")
    assert before is not None
    port = broker.broker_port
    broker.stop_one("mosquitto")
    await asyncio.to_thread(
        wait, lambda: metric(stack, "roost_hub_mqtt_connected") == 0, 15, "hub disconnected"
    )
    broker.start_broker(port)  # a fresh broker: no retained messages survive
    await asyncio.to_thread(
        wait, lambda: metric(stack, "roost_hub_mqtt_connected") == 1, 30, "hub reconnected"
    )
    # The hub republished its device; HA's birth message brought the latest decision back.
    state = await asyncio.to_thread(
        ha.wait_state,
        f"binary_sensor.{E}_occupancy_kitchen",
        lambda s: (
            s["state"] != "unavailable"
            and s["attributes"].get("decision_id") == before["attributes"]["decision_id"]
        ),
        60,
    )
    assert state["state"] == before["state"]
    ha.wait_state(f"select.{E}_learning_mode", lambda s: s["state"] == "learning", 20)
    assert stack.procs["hub"].alive()


def test_household_values_stay_out_of_logs_and_metrics(
    roost: tuple[Stack, FakePersonalization],
) -> None:
    stack, _ = roost
    log = (stack.home / "log" / "hub.log").read_text()
    text = metrics(stack)
    for value in (*VACANT.values(), *OCCUPIED.values()):
        if value:
            assert str(value) not in log
            assert str(value) not in text
    assert "kitchen" not in text  # no area in metric labels


def test_uninstall_removes_the_device(
    ha: HomeAssistant, roost: tuple[Stack, FakePersonalization], monkeypatch: pytest.MonkeyPatch
) -> None:
    stack, _ = roost
    stack.stop_one("hub")  # or it announces itself again on HA's next birth message
    monkeypatch.setenv("ROOST_HUB_HUB_ID", HUB_ID)
    assert main(["ha", "uninstall", "--mqtt-port", str(ha.broker_port), "--wait", "3"]) == 0
    ha.wait_removed(f"select.{E}_learning_mode", timeout=20)
    ha.wait_removed(f"binary_sensor.{E}_occupancy_kitchen", timeout=20)
    devices = [d for d in ha.device_registry() if ["mqtt", f"roost_{HUB_ID}"] in d["identifiers"]]
    assert devices == []
