"""The homeowner's "Learning mode" is binding where fleet rounds are computed, on real
processes: mosquitto, audit, inference, personalization and the hub (``[fleet]
enabled``). The mode is set the way Home Assistant sets it (its command topic); the round
is asked for the way the fleet ClientApp asks (``fleet.client_app.HubClient`` inside
``fleet.egress.egress_audit_mod``, mTLS as the hub). ``local-only`` makes the hub sit the
round out (a ``fleet.sit_out`` record naming the mode) with nothing reserved or charged;
only the hub may set the mode; a mode set while personalization was down is enforced once
it is back; ``learning`` lets rounds through again.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from flwr.app import Context, Message
from flwr.common import ConfigRecord, MessageType, RecordDict
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from flwr.supercore.task_identity import TaskIdentity

from cli.stack import Stack
from fleet import protocol
from fleet.client_app import HubClient
from fleet.egress import SIT_OUT, SitOut, egress_audit_mod
from hub import mqtt
from hub.homeassistant.topics import command_topic, ha_filter, state_topic, sync_topic
from hub.homeassistant.uninstall import retained_messages
from models.datasets import DatasetMissing, load_occupancy
from models.occupancy.data import build_features
from roost.audit.v1 import audit_service_pb2 as audit_pb
from roost.audit.v1 import audit_service_pb2_grpc as audit_grpc
from roost.personalization.v1 import personalization_service_pb2 as pb
from roost.personalization.v1 import personalization_service_pb2_grpc as pb_grpc
from services.kit.auth import Role
from services.kit.tensors import array_to_tensor
from tests.support.mqtt_helpers import publish
from tests.support.shared_data import DATA_DIR
from tests.support.stacks import require_mosquitto, service_channel
from tests.support.waiting import wait_for_async, wait_until

pytestmark = pytest.mark.integration

HUB_ID = "learnmode"
SUPERLINK = "fleet.example:9092"
HEAD_SIZE = 66  # occupancy: Linear(32, 2)
REFUSAL = "the homeowner set learning to local-only: no fleet rounds"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_mosquitto()
    st = Stack(tmp_path_factory.mktemp("learning-mode") / "home", hub_id=HUB_ID)
    try:
        st.bootstrap_models()
        st.start_broker()
        st.start_service(Role.AUDIT)
        st.start_service(Role.INFERENCE)
        st.start_service(
            Role.PERSONALIZATION,
            {"ROOST_PERSONALIZATION_MIN_EXAMPLES": "50", "ROOST_PERSONALIZATION_EPOCHS": "1"},
            timeout=60,
        )
        st.start_hub({"ROOST_FLEET_ENABLED": "true", "ROOST_HUB_HA_POLL_SECONDS": "0.5"})
    except BaseException:
        st.stop()
        raise
    yield st
    st.stop()


@pytest.fixture(autouse=True)
def run_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower's messages carry their run (flwr-clientapp sets it in a real SuperNode)."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 11, raising=False)
    monkeypatch.setattr(TaskIdentity, "_node_id", 1, raising=False)
    monkeypatch.setattr(TaskIdentity, "_task_id", 5, raising=False)


def node_context(stack: Stack) -> Context:
    """The SuperNode's context as ``roost run`` configures it (cli/fleet_node.py)."""
    config = {
        protocol.NODE_HUB_ID: HUB_ID,
        protocol.NODE_CERTS_DIR: str(stack.certs_dir),
        protocol.NODE_PERSONALIZATION: f"127.0.0.1:{stack.port_of(Role.PERSONALIZATION)}",
        protocol.NODE_AUDIT: f"127.0.0.1:{stack.port_of(Role.AUDIT)}",
        protocol.NODE_SUPERLINK: SUPERLINK,
    }
    return Context(run_id=11, node_id=7, node_config=config, state=RecordDict(), run_config={})


def round_config(round_id: str) -> dict[str, Any]:
    return {
        protocol.ROUND_ID: round_id,
        protocol.MODEL: "occupancy",
        protocol.NOISE_MULTIPLIER: 2.0,
        protocol.CLIP_NORM: 1.0,
        protocol.MIN_PARTICIPANTS: 4,
    }


def fit(stack: Stack, round_id: str) -> np.ndarray:
    """One round as the ClientApp runs it, inside the egress mod (plain, no SecAgg+)."""
    ctx = node_context(stack)
    msg = Message(
        RecordDict({RECORD_KEY_CONFIGS: ConfigRecord({Key.STAGE: "plain"})}),
        dst_node_id=7,
        message_type=MessageType.TRAIN,
        group_id=round_id,
    )
    out: list[np.ndarray] = []

    def inner(m: Message, c: Context) -> Message:
        params, _, _ = HubClient(c).fit([np.zeros(HEAD_SIZE, np.float32)], round_config(round_id))
        out.append(params[0])
        return Message(RecordDict(), reply_to=m)

    egress_audit_mod(msg, ctx, inner)
    return out[0]


def set_mode_from_home_assistant(stack: Stack, mode: str) -> None:
    asyncio.run(publish(stack, [(command_topic(HUB_ID, "learning_mode"), mode.encode())]))


async def call(stack: Stack, role: Role, method: str, request: Any) -> Any:
    channel = service_channel(stack, Role.PERSONALIZATION, role)
    async with channel:
        return await getattr(pb_grpc.PersonalizationServiceStub(channel), method)(
            request, timeout=30
        )


async def refusal(stack: Stack) -> str | None:
    """What a round asked for now is refused with (FAILED_PRECONDITION), None if computed."""
    request = pb.ComputeFederatedUpdateRequest(
        model_name="occupancy",
        round_id="probe",
        clip_norm=1.0,
        noise_multiplier=2.0,
        min_participants=4,
        global_parameters=np.zeros(HEAD_SIZE, "<f4").tobytes(),
    )
    try:
        await call(stack, Role.HUB, "ComputeFederatedUpdate", request)
    except grpc.aio.AioRpcError as e:
        if e.code() != grpc.StatusCode.FAILED_PRECONDITION:
            raise
        return str(e.details())
    return None


def wait_refused_with(stack: Stack, words: str) -> None:
    async def refused() -> bool:
        return words in (await refusal(stack) or "")

    asyncio.run(wait_for_async(refused, 60, f"rounds refused with {words!r}", interval=0.2))


async def ledger_entries(stack: Stack) -> int:
    resp = await call(stack, Role.HUB, "ListLedgerEntries", pb.ListLedgerEntriesRequest())
    return len(resp.entries)


async def audit_records(stack: Stack, action: str) -> list[audit_pb.LogEntry]:
    channel = service_channel(stack, Role.AUDIT, Role.AUDITOR)
    async with channel:
        resp = await audit_grpc.AuditServiceStub(channel).QueryDecisions(
            audit_pb.QueryDecisionsRequest(action=action, page_size=100), timeout=10
        )
    return list(resp.entries)


async def fleet_state(stack: Stack) -> str:
    async with mqtt.client("127.0.0.1", stack.broker_port) as client:
        held = await retained_messages(client, [ha_filter(HUB_ID)], sync_topic(HUB_ID))
    payload = held.get(state_topic(HUB_ID, "fleet"))
    return "" if payload is None else str(json.loads(payload)["state"])


def add_examples(stack: Stack, n: int = 400) -> None:
    try:
        train = load_occupancy("train", DATA_DIR)
    except DatasetMissing as e:
        pytest.skip(f"{e}")
    x = build_features(train)[:n].astype(np.float32)
    labels = ["occupied" if v else "vacant" for v in train.occupancy[:n]]
    request = pb.AddExamplesRequest(
        model_name="occupancy",
        source=pb.LABEL_SOURCE_SENSOR,
        examples=[
            pb.Example(input=array_to_tensor(r), label=lab)
            for r, lab in zip(x, labels, strict=True)
        ],
    )
    asyncio.run(call(stack, Role.HUB, "AddExamples", request))


def test_local_only_from_home_assistant_makes_the_hub_sit_rounds_out(stack: Stack) -> None:
    set_mode_from_home_assistant(stack, "local-only")
    # Until the mode arrives a round is refused for the empty store: nothing is charged.
    wait_refused_with(stack, REFUSAL)
    add_examples(stack)  # enough examples: only the mode can refuse a round now

    with pytest.raises(SitOut) as sat:
        fit(stack, "lo-1")
    assert REFUSAL in sat.value.reason
    assert asyncio.run(ledger_entries(stack)) == 0
    assert asyncio.run(audit_records(stack, "privacy.reserve")) == []
    [record] = asyncio.run(audit_records(stack, SIT_OUT))
    assert REFUSAL in record.decision.policy.reason
    assert "nothing sent" in record.decision.policy.reason

    async def sensor_off() -> bool:
        return await fleet_state(stack) == "off: local-only (set in Home Assistant)"

    asyncio.run(wait_for_async(sensor_off, 30, "the Fleet learning sensor shows off"))


@pytest.mark.parametrize("role", [Role.ADMIN, Role.AUDITOR, Role.UPDATE, Role.INFERENCE])
def test_no_other_identity_can_set_the_mode(stack: Stack, role: Role) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        asyncio.run(
            call(
                stack,
                role,
                "SetLearningMode",
                pb.SetLearningModeRequest(mode=pb.LEARNING_MODE_LEARNING),
            )
        )
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert REFUSAL in (asyncio.run(refusal(stack)) or "")


def test_a_mode_set_while_personalization_is_down_is_enforced_when_it_is_back(
    stack: Stack,
) -> None:
    set_mode_from_home_assistant(stack, "learning")

    async def computed() -> bool:
        return await refusal(stack) is None

    asyncio.run(wait_for_async(computed, 120, "a round computed in learning mode", interval=0.5))
    charged = asyncio.run(ledger_entries(stack))
    assert charged >= 1
    delta = fit(stack, "on-1")  # the ClientApp's round goes through too
    assert delta.shape == (HEAD_SIZE,)
    assert asyncio.run(ledger_entries(stack)) == charged + 1

    stack.stop_one(Role.PERSONALIZATION.value)
    set_mode_from_home_assistant(stack, "local-only")

    async def saved() -> bool:
        return await fleet_state(stack) == "off: local-only (set in Home Assistant)"

    asyncio.run(wait_for_async(saved, 30, "the hub took local-only"))
    stack.respawn(Role.PERSONALIZATION.value)
    wait_until(lambda: stack.poll_ready(Role.PERSONALIZATION.value), 60, "personalization back")
    # The restarted service held "learning"; the hub's next poll sends local-only. (Until
    # then the probe's round could be computed: it is the round "probe" again, which the
    # ledger charged once already, so the count below would not move.)
    wait_refused_with(stack, REFUSAL)
    assert asyncio.run(ledger_entries(stack)) == charged + 1
