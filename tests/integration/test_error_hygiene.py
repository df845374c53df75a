"""Error hygiene of every real service process: bytes that are not a protobuf message get
INVALID_ARGUMENT naming the request type, the server logs no traceback and keeps
serving (the kit's interceptor does this once for all of them); a Timestamp out of
protobuf's range is INVALID_ARGUMENT naming the field in every service that takes one
(services.kit.timestamps), never INTERNAL."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cli.stack import Stack
from roost.audit.v1 import audit_service_pb2 as audit_pb
from roost.audit.v1 import audit_service_pb2_grpc as audit_grpc
from roost.personalization.v1 import personalization_service_pb2 as pers_pb
from roost.personalization.v1 import personalization_service_pb2_grpc as pers_grpc
from services.kit.auth import Role
from services.kit.tensors import array_to_tensor
from tests.support.occupancy_rows import synthetic_occupancy
from tests.support.stacks import service_channel

pytestmark = pytest.mark.integration

# Field number 0 and a truncated varint: not a valid encoding of any message.
GARBAGE = b"\xff\xff\xff\xff\xff"

# (server, caller allowed to call the method, method, request type)
CALLS = [
    (Role.AUDIT, Role.HUB, "/roost.audit.v1.AuditService/AppendDecisions", "AppendDecisions"),
    (Role.AUDIT, Role.AUDITOR, "/roost.audit.v1.AuditService/ExportDecisions", "ExportDecisions"),
    (Role.INFERENCE, Role.HUB, "/roost.inference.v1.InferenceService/Predict", "Predict"),
    (Role.UPDATE, Role.ADMIN, "/roost.update.v1.UpdateService/Stage", "Stage"),
    (
        Role.PERSONALIZATION,
        Role.HUB,
        "/roost.personalization.v1.PersonalizationService/RecordLabel",
        "RecordLabel",
    ),
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    st = Stack(tmp_path_factory.mktemp("hygiene") / "home", hub_id="hygiene")
    try:
        st.start_service(Role.AUDIT)
        st.start_service(Role.INFERENCE)
        st.start_service(Role.UPDATE)
        st.start_service(Role.PERSONALIZATION, timeout=60)
        yield st
    finally:
        st.stop()


@pytest.mark.parametrize(("server", "caller", "method", "rpc"), CALLS, ids=[c[3] for c in CALLS])
async def test_undecodable_request_bytes_are_invalid_argument(
    stack: Stack, server: Role, caller: Role, method: str, rpc: str
) -> None:
    async with service_channel(stack, server, caller) as channel:
        if rpc == "ExportDecisions":
            call = channel.unary_stream(method)
            with pytest.raises(grpc.aio.AioRpcError) as e:
                async for _ in call(GARBAGE, timeout=10):
                    pass
        else:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await channel.unary_unary(method)(GARBAGE, timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
        assert f"{rpc}Request message" in (e.value.details() or "")
        # Still serving: the health check of the same process answers.
        health = health_pb2_grpc.HealthStub(channel)
        ok = await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert ok.status == health_pb2.HealthCheckResponse.SERVING
    proc = stack.procs[server.value]
    assert proc.alive()
    log = proc.log_tail(200)
    assert "Traceback" not in log
    assert "DecodeError" not in log


YEAR_10000 = 253_402_300_800  # one second past the last valid Timestamp


async def test_a_timestamp_out_of_range_is_invalid_argument_naming_the_field(
    stack: Stack,
) -> None:
    x, labels = synthetic_occupancy(1, seed=1)
    example = pers_pb.Example(input=array_to_tensor(x[0]), label=labels[0])
    example.observed_at.seconds = YEAR_10000
    async with service_channel(stack, Role.PERSONALIZATION, Role.HUB) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await pers_grpc.PersonalizationServiceStub(channel).AddExamples(
                pers_pb.AddExamplesRequest(
                    model_name="occupancy",
                    source=pers_pb.LABEL_SOURCE_SENSOR,
                    examples=[example],
                ),
                timeout=30,
            )
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
        assert (e.value.details() or "").startswith(
            "examples[0].observed_at: not a valid timestamp"
        )
    async with service_channel(stack, Role.AUDIT, Role.AUDITOR) as channel:
        request = audit_pb.QueryDecisionsRequest()
        request.start_time.nanos = -1
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await audit_grpc.AuditServiceStub(channel).QueryDecisions(request, timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
        assert (e.value.details() or "").startswith("start_time: not a valid timestamp")
    for role in (Role.PERSONALIZATION, Role.AUDIT):
        assert "Traceback" not in stack.procs[role.value].log_tail(200)
