"""The egress mod with a stand-in audit log (the real one: tests/integration/test_fleet_flower.py):
a reply leaves only after its record is appended, and the record hashes exactly that reply."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import pytest
from flwr.app import Context, Message
from flwr.common import ConfigRecord, MessageType, RecordDict
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from flwr.common.serde import recorddict_to_proto
from flwr.supercore.task_identity import TaskIdentity

from fleet import egress
from fleet.egress import CONTRIBUTION, ROUND_STATE, SitOut, egress_audit_mod
from roost.audit.v1 import audit_service_pb2 as audit_pb
from services.audit.limits import MAX_TEXT_CHARS

NODE_CONFIG = {
    "hub-id": "h1",
    "certs-dir": "/nonexistent",
    "personalization-target": "127.0.0.1:1",
    "audit-target": "127.0.0.1:2",
    "superlink": "fleet.example:9093",
}


def _msg(stage: str) -> Message:
    content = RecordDict({RECORD_KEY_CONFIGS: ConfigRecord({Key.STAGE: stage})})
    return Message(content, dst_node_id=7, message_type=MessageType.TRAIN, group_id="3")


def _ctx() -> Context:
    return Context(
        run_id=0, node_id=7, node_config=dict(NODE_CONFIG), state=RecordDict(), run_config={}
    )


@pytest.fixture(autouse=True)
def run_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower's messages carry the run they belong to (set by flwr-clientapp/-serverapp)."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 11, raising=False)
    monkeypatch.setattr(TaskIdentity, "_node_id", 1, raising=False)
    monkeypatch.setattr(TaskIdentity, "_task_id", 5, raising=False)


@pytest.fixture
def appended(monkeypatch: pytest.MonkeyPatch) -> list[audit_pb.Decision]:
    out: list[audit_pb.Decision] = []
    monkeypatch.setattr(egress, "append_records", lambda node, ds: out.extend(ds))
    return out


def test_the_record_names_exactly_the_reply_and_the_round_charge(
    appended: list[audit_pb.Decision],
) -> None:
    ctx, msg = _ctx(), _msg("collect_masked_vectors")
    round_id = f"{msg.metadata.run_id}-3"

    def inner(m: Message, c: Context) -> Message:
        c.state.config_records[ROUND_STATE] = ConfigRecord(
            {
                "round_id": round_id,
                "model": "occupancy",
                "model_version": "v9",
                "round_epsilon": 3.5,
                "mechanism": "gaussian sigma 1",
            }
        )
        return Message(RecordDict({"x": ConfigRecord({"masked": b"\x01\x02"})}), reply_to=m)

    reply = egress_audit_mod(msg, ctx, inner)
    sent = recorddict_to_proto(reply.content).SerializeToString()
    [d] = appended
    label = json.loads(d.output_label)
    assert d.action == "fleet.send"
    assert label["sha256"] == hashlib.sha256(sent).hexdigest() == d.model.sha256
    assert label["size"] == len(sent)
    assert label["epsilon"] == 3.5
    assert label["model_version"] == "v9"
    assert label["server"] == "fleet.example:9093"
    assert label["stage"] == "collect_masked_vectors"


def test_key_stages_carry_no_epsilon(appended: list[audit_pb.Decision]) -> None:
    egress_audit_mod(_msg("setup"), _ctx(), lambda m, c: Message(RecordDict(), reply_to=m))
    [d] = appended
    assert json.loads(d.output_label)["epsilon"] == 0.0
    assert "no model data" in json.loads(d.output_label)["mechanism"]


def test_nothing_leaves_when_the_audit_log_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(node: Any, ds: Any) -> None:
        raise RuntimeError("audit log unavailable")

    monkeypatch.setattr(egress, "append_records", refuse)
    with pytest.raises(RuntimeError, match="audit log unavailable"):
        egress_audit_mod(_msg("setup"), _ctx(), lambda m, c: Message(RecordDict(), reply_to=m))


def test_a_hub_without_budget_sits_out_says_so_and_sends_no_reason(
    appended: list[audit_pb.Decision],
) -> None:
    def inner(m: Message, c: Context) -> Message:
        raise SitOut("0-3", "privacy budget exhausted: epsilon 3.9 of 4")

    with pytest.raises(SitOut) as e:
        egress_audit_mod(_msg("collect_masked_vectors"), _ctx(), inner)
    assert "budget" not in str(e.value)  # what Flower would send to the server
    [d] = appended
    assert d.action == "fleet.sit_out"
    assert "budget exhausted" in d.policy.reason


def test_the_masked_vector_record_names_and_keeps_the_unmasked_contribution(
    appended: list[audit_pb.Decision],
) -> None:
    msg = _msg("collect_masked_vectors")
    # The longest run id Flower draws (uint64): the label must still fit the audit limit.
    round_id = f"{2**64 - 1}-3"
    msg.metadata.__dict__["_run_id"] = 2**64 - 1
    contribution = np.linspace(-1, 1, 66).astype("<f4")

    def inner(m: Message, c: Context) -> Message:
        c.state.config_records[ROUND_STATE] = ConfigRecord(
            {
                "round_id": round_id,
                "model": "occupancy",
                "model_version": "1.0.0.12",
                "round_epsilon": 7.59,
                "mechanism": "gaussian sigma 0.5 C 1 t 100 (hub share), SecAgg+",
                CONTRIBUTION: contribution.tobytes(),
            }
        )
        return Message(RecordDict({"x": ConfigRecord({"masked": b"\x01\x02"})}), reply_to=m)

    egress_audit_mod(msg, _ctx(), inner)
    [d] = appended
    label = json.loads(d.output_label)
    assert label["contribution_sha256"] == hashlib.sha256(contribution.tobytes()).hexdigest()
    assert abs(label["contribution_norm"] - float(np.linalg.norm(contribution))) < 1e-5
    assert label["sha256"] != label["contribution_sha256"]  # what left is the masked reply
    assert list(d.inputs.feature_names) == [CONTRIBUTION]
    assert np.allclose(np.asarray(d.inputs.tensor.float_values, np.float32), contribution)
    assert len(d.output_label) <= MAX_TEXT_CHARS
    assert len(d.SerializeToString()) < 16 * 1024


def test_key_stages_name_no_contribution(appended: list[audit_pb.Decision]) -> None:
    ctx = _ctx()
    ctx.state.config_records[ROUND_STATE] = ConfigRecord(
        {"round_id": "11-3", "model": "occupancy", CONTRIBUTION: b"\x00" * 264}
    )
    egress_audit_mod(_msg("unmask"), ctx, lambda m, c: Message(RecordDict(), reply_to=m))
    [d] = appended
    assert json.loads(d.output_label)["contribution_sha256"] == ""
    assert not d.HasField("inputs")
