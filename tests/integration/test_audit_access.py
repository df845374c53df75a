"""Who may do what to the real audit service: every method x every role, over mTLS.

Only the hub and the services append; auditors (and the hub, update, admin) read;
only an admin redacts. A caller without a certificate of the hub's CA gets nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from cli.stack import Stack
from hub.peer_streams import StreamedAudit
from roost.audit.v1 import audit_service_pb2 as pb
from roost.audit.v1 import audit_service_pb2_grpc as pb_grpc
from services.audit.servicer import POLICY
from services.kit.auth import Role
from services.kit.certs import ensure_certs, server_name
from services.kit.client import aio_channel

pytestmark = pytest.mark.integration

Call = Callable[[pb_grpc.AuditServiceStub], Awaitable[Any]]


async def _drain(stream: Any) -> None:
    async for _ in stream:
        pass


async def _one_on_stream(stub: Any) -> None:
    """One (empty, so refused) append over the hub's stream client: INVALID_ARGUMENT for
    a role that may open the stream; for any other the stream itself is refused."""
    streamed = StreamedAudit(stub)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await streamed.AppendDecisions(pb.AppendDecisionsRequest(), timeout=5)
    finally:
        await streamed.close()
    codes = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED)
    assert refused.value.code() in codes, refused.value
    raise refused.value  # the matrix judges the code


# One harmless request per method; the role decides whether it may run at all.
REQUESTS: dict[str, Call] = {
    "AppendDecisions": lambda s: s.AppendDecisions(pb.AppendDecisionsRequest(), timeout=5),
    "AppendDecisionsStream": _one_on_stream,
    "QueryDecisions": lambda s: s.QueryDecisions(pb.QueryDecisionsRequest(), timeout=5),
    "GetDecision": lambda s: s.GetDecision(pb.GetDecisionRequest(decision_id="x"), timeout=5),
    "GetCheckpoint": lambda s: s.GetCheckpoint(pb.GetCheckpointRequest(), timeout=5),
    "GetInclusionProof": lambda s: s.GetInclusionProof(
        pb.GetInclusionProofRequest(decision_id="x"), timeout=5
    ),
    "GetConsistencyProof": lambda s: s.GetConsistencyProof(
        pb.GetConsistencyProofRequest(), timeout=5
    ),
    "ExportDecisions": lambda s: _drain(
        s.ExportDecisions(pb.ExportDecisionsRequest(entity_id="nobody"), timeout=5)
    ),
    "RedactInputs": lambda s: s.RedactInputs(
        pb.RedactInputsRequest(decision_id="x", reason="test"), timeout=5
    ),
}


@pytest.fixture(scope="module")
def audit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("audit-access"), hub_id="access")
    try:
        stack.start_service(Role.AUDIT)
        yield stack
    finally:
        stack.stop()


def stub(stack: Stack, role: Role) -> pb_grpc.AuditServiceStub:
    channel = aio_channel(
        f"127.0.0.1:{stack.port_of(Role.AUDIT)}",
        certs_dir=stack.certs_dir,
        role=role,
        server_role=Role.AUDIT,
    )
    return pb_grpc.AuditServiceStub(channel)  # type: ignore[no-untyped-call]


def test_every_method_has_a_policy() -> None:
    methods = pb.DESCRIPTOR.services_by_name["AuditService"].methods_by_name
    assert set(REQUESTS) == set(methods)
    assert {m.rsplit("/", 1)[1] for m in POLICY} == set(methods)


def test_the_policy_is_the_intended_one() -> None:
    allowed = {m.rsplit("/", 1)[1]: roles for m, roles in POLICY.items()}
    assert allowed["AppendDecisions"] == {Role.HUB, Role.UPDATE, Role.PERSONALIZATION}
    assert allowed["RedactInputs"] == {Role.ADMIN}
    assert allowed["AppendDecisionsStream"] == {Role.HUB}  # the decision path only
    for method in REQUESTS:
        assert Role.INFERENCE not in allowed[method]
        if method not in ("AppendDecisions", "AppendDecisionsStream", "RedactInputs"):
            assert Role.AUDITOR in allowed[method]
    assert Role.AUDITOR not in allowed["AppendDecisions"]
    assert Role.AUDITOR not in allowed["RedactInputs"]


@pytest.mark.parametrize("method", sorted(REQUESTS))
async def test_each_role_gets_exactly_its_access(audit: Stack, method: str) -> None:
    allowed = POLICY[f"/roost.audit.v1.AuditService/{method}"]
    for role in Role:
        if role == Role.AUDIT:
            continue  # the service's own identity is not a client of itself
        try:
            await REQUESTS[method](stub(audit, role))
            code = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as e:
            code = e.code()
            details = e.details() or ""
        if role in allowed:
            assert code != grpc.StatusCode.PERMISSION_DENIED, (method, role)
        else:
            assert code == grpc.StatusCode.PERMISSION_DENIED, (method, role, code)
            assert role.value in details
            assert method in details


async def test_a_certificate_from_another_ca_is_refused(audit: Stack, tmp_path: Path) -> None:
    # A complete, valid-looking identity issued by a different (attacker's) CA.
    other = tmp_path / "other-certs"
    ensure_certs(other, "access")
    channel = grpc.aio.secure_channel(
        f"127.0.0.1:{audit.port_of(Role.AUDIT)}",
        grpc.ssl_channel_credentials(
            root_certificates=(audit.certs_dir / "ca.pem").read_bytes(),
            private_key=(other / "admin-key.pem").read_bytes(),
            certificate_chain=(other / "admin.pem").read_bytes(),
        ),
        options=[("grpc.ssl_target_name_override", server_name(Role.AUDIT))],
    )
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await pb_grpc.AuditServiceStub(channel).RedactInputs(  # type: ignore[no-untyped-call]
            pb.RedactInputsRequest(decision_id="x", reason="r"), timeout=5
        )
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    await channel.close()


async def test_a_caller_without_a_certificate_is_refused(audit: Stack) -> None:
    channel = grpc.aio.secure_channel(
        f"127.0.0.1:{audit.port_of(Role.AUDIT)}",
        grpc.ssl_channel_credentials(root_certificates=(audit.certs_dir / "ca.pem").read_bytes()),
        options=[("grpc.ssl_target_name_override", server_name(Role.AUDIT))],
    )
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await pb_grpc.AuditServiceStub(channel).QueryDecisions(  # type: ignore[no-untyped-call]
            pb.QueryDecisionsRequest(), timeout=5
        )
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    await channel.close()
    await asyncio.sleep(0)
