"""Error hygiene of every real service process: bytes that are not a protobuf message get
INVALID_ARGUMENT naming the request type, the server logs no traceback and keeps
serving (the kit's interceptor does this once for all of them)."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cli.stack import Stack
from services.kit.auth import Role
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
