"""Readings flow through a real broker into the hub, get predicted by the inference
service, recorded by the audit service, and published back to MQTT."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest

from cli.stack import Stack
from hub import mqtt
from hub.topics import reading_topic, status_topic
from roost.audit.v1 import audit_service_pb2 as audit_pb
from services.audit.checkpoint import NoteVerifier, verify_checkpoint
from services.audit.merkle import leaf_hash, verify_consistency, verify_inclusion
from services.kit.auth import Role
from tests.support.metrics import metric
from tests.support.mqtt_helpers import (
    DAY_TS,
    NIGHT_TS,
    OCCUPIED,
    VACANT,
    audit_stub,
    collect_decisions,
    publish,
    readings,
)

pytestmark = pytest.mark.integration


async def test_readings_become_recorded_published_decisions(stack: Stack) -> None:
    async with collect_decisions(stack) as decisions:
        # The 4th reading completes the window: one decision, then one per reading.
        await publish(stack, readings("study", OCCUPIED, DAY_TS, "day"))
        await publish(stack, readings("bedroom", VACANT, NIGHT_TS, "night"))
        got = await decisions.wait_for(2)
    by_area = {d["area"]: d for d in got}
    day, night = by_area["study"], by_area["bedroom"]
    assert day["label"] == "occupied"
    assert night["label"] == "vacant"
    assert day["trigger_id"] == "day-carbon_dioxide"
    assert day["model"]["name"] == "occupancy"
    assert len(day["model"]["sha256"]) == 64
    assert 0.5 <= day["confidence"] <= 1.0

    stub = audit_stub(stack)
    for d in (day, night):
        entry = (
            await stub.GetDecision(
                audit_pb.GetDecisionRequest(decision_id=d["decision_id"]), timeout=5
            )
        ).entry
        assert entry.index == d["audit_index"]
        assert entry.decision.entity_id == f"occupancy.{d['area']}"
        assert entry.decision.model.sha256 == d["model"]["sha256"]
        assert entry.decision.output_label == d["label"]
        assert list(entry.decision.inputs.feature_names)[:4] == [
            "temperature",
            "humidity",
            "light",
            "co2",
        ]
        assert len(entry.decision.inputs_digest) == 64
        # The grounds of the decision: its top occlusion attributions, recorded and
        # published with a plain-language "why".
        recorded = [(a.feature, round(a.attribution, 6)) for a in entry.decision.explanation]
        assert len(recorded) == 3
        assert recorded == [(a["feature"], a["attribution"]) for a in d["explanation"]]
        # Named for people, with the value and unit of the main input.
        names = {"light": "Light", "co2": "CO₂", "temperature": "Temperature"}
        names |= {"humidity": "Humidity", "hour_sin": "The time of day"}
        names |= {"hour_cos": "The time of day"}
        assert d["why"].startswith(names[recorded[0][0]] + " "), d["why"]
        assert " was the main reason." in d["why"]
    # Light drives the daytime occupancy decision most.
    assert day["explanation"][0]["feature"] == "light"
    assert day["explanation"][0]["attribution"] > 0


async def test_bad_readings_are_counted_dropped_and_hub_keeps_deciding(stack: Stack) -> None:
    topic = reading_topic("lab", "temperature")
    bad = [
        (topic, b"{not json"),
        (topic, b'{"value": NaN}'),
        (topic, b'{"value": "hot"}'),
        (topic, b"x" * 5000),
        (topic, b"\xff\xfe\x00"),
        (reading_topic("lab", "radon"), b'{"value": 1}'),
        ("roost/readings/Bad Area/temperature", b"1"),
    ]
    names = {
        "bad_json": 1,
        "not_finite": 1,
        "wrong_type": 1,
        "oversized": 1,
        "not_utf8": 1,
        "unknown_sensor": 1,
    }
    before = {r: metric(stack, "roost_hub_readings_dropped_total", reason=r) for r in names}
    async with collect_decisions(stack) as decisions:
        await publish(stack, bad)
        await publish(stack, readings("lab", OCCUPIED, DAY_TS, "after-bad"))
        got = await decisions.wait_for(1)
    assert got[0]["area"] == "lab"
    for reason, n in names.items():
        after = metric(stack, "roost_hub_readings_dropped_total", reason=reason)
        assert after - before[reason] == n, reason
    assert stack.procs["hub"].alive()


async def test_hub_announces_itself_online(stack: Stack) -> None:
    async with mqtt.client("127.0.0.1", stack.broker_port) as client:
        await client.subscribe(status_topic(stack.hub_id), qos=1)
        message = await asyncio.wait_for(anext(aiter(client.messages)), 5)
        assert message.payload == b"online"
        assert message.retain


async def test_audit_rejects_the_wrong_roles_and_bad_requests(stack: Stack) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await audit_stub(stack, Role.AUDITOR).AppendDecisions(
            audit_pb.AppendDecisionsRequest(decisions=[audit_pb.Decision(decision_id="x")]),
            timeout=5,
        )
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    hub = audit_stub(stack, Role.HUB)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await hub.AppendDecisions(
            audit_pb.AppendDecisionsRequest(decisions=[audit_pb.Decision(decision_id="x")]),
            timeout=5,
        )
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "decisions[0]" in (e.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await hub.GetDecision(audit_pb.GetDecisionRequest(decision_id="no-such-id"), timeout=5)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await hub.QueryDecisions(audit_pb.QueryDecisionsRequest(page_token="%%%"), timeout=5)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_binary_sensor_events_become_routine_decisions(stack: Stack) -> None:
    t0 = NIGHT_TS - 4000
    events = [
        (reading_topic("bedroom", "door"), {"value": 1, "ts": t0, "id": "e0"}),
        (reading_topic("bedroom", "door"), {"value": 0, "ts": t0 + 20, "id": "e1"}),
        # 61 minutes later the routine window has warmed up: this event decides.
        (reading_topic("toilet", "toilet_flush"), {"value": 1, "ts": t0 + 3700, "id": "e2"}),
    ]
    async with collect_decisions(stack) as decisions:
        await publish(stack, [(t, json.dumps(p).encode()) for t, p in events])
        got = await decisions.wait_for(1)
    routine = [d for d in got if d["model"]["name"] == "routine"]
    assert routine, got
    assert routine[0]["area"] == "home"
    assert routine[0]["trigger_id"] == "e2"
    labels = {"away", "asleep", "toilet", "shower", "breakfast", "dinner", "drink", "idle"}
    assert routine[0]["label"] in labels
    assert len(routine[0]["values"]) == 8


async def test_published_decisions_prove_inclusion_in_a_signed_checkpoint(stack: Stack) -> None:
    async with collect_decisions(stack) as decisions:
        await publish(stack, readings("kitchen", OCCUPIED, DAY_TS, "proof"))
        got = await decisions.wait_for(1)
    vkey = (stack.home / "data" / "audit" / "checkpoint.vkey").read_text().strip()
    verifier = NoteVerifier.from_vkey(vkey)
    stub = audit_stub(stack, Role.AUDITOR)
    cp_resp = await stub.GetCheckpoint(audit_pb.GetCheckpointRequest(), timeout=5)
    cp = verify_checkpoint(verifier, cp_resp.signed_note, verifier.name)
    assert cp.size == cp_resp.tree_size >= got[0]["audit_index"] + 1
    assert cp.root_hash == cp_resp.root_hash
    entry = (
        await stub.GetDecision(
            audit_pb.GetDecisionRequest(decision_id=got[0]["decision_id"]), timeout=5
        )
    ).entry
    proof = await stub.GetInclusionProof(
        audit_pb.GetInclusionProofRequest(decision_id=got[0]["decision_id"], tree_size=cp.size),
        timeout=5,
    )
    assert proof.index == entry.index
    assert proof.tree_size == cp.size
    verify_inclusion(
        leaf_hash(entry.record), proof.index, proof.tree_size, list(proof.hashes), cp.root_hash
    )
    # Consistency from the one-leaf tree, whose root is the first leaf hash.
    first = await stub.QueryDecisions(audit_pb.QueryDecisionsRequest(page_size=1), timeout=5)
    root1 = first.entries[0].leaf_hash
    consistency = await stub.GetConsistencyProof(
        audit_pb.GetConsistencyProofRequest(first_tree_size=1, second_tree_size=cp.size),
        timeout=5,
    )
    verify_consistency(1, cp.size, list(consistency.hashes), root1, cp.root_hash)
    # tree_size 0 proves against the latest checkpoint.
    latest = await stub.GetInclusionProof(
        audit_pb.GetInclusionProofRequest(decision_id=got[0]["decision_id"]), timeout=5
    )
    assert latest.index == entry.index
    assert latest.tree_size >= cp.size
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.GetInclusionProof(
            audit_pb.GetInclusionProofRequest(decision_id="no-such-id"), timeout=5
        )
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    too_small = entry.index or 10**9  # index >= tree_size, or beyond the tree
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.GetInclusionProof(
            audit_pb.GetInclusionProofRequest(
                decision_id=got[0]["decision_id"], tree_size=too_small
            ),
            timeout=5,
        )
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.GetConsistencyProof(
            audit_pb.GetConsistencyProofRequest(first_tree_size=2, second_tree_size=1),
            timeout=5,
        )
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
