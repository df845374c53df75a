"""The real audit service's bounds, tried the way the issue's hostile caller did: an
oversized or non-finite field is refused naming the field, and a log full of entries at
every limit still exports completely (and verifies) and pages through QueryDecisions,
each message well within gRPC's 4 MiB."""

from __future__ import annotations

import math
from collections.abc import Iterator

import grpc
import pytest

from cli.stack import Stack
from roost.audit.v1 import audit_service_pb2 as pb
from roost.audit.v1 import audit_service_pb2_grpc as pb_grpc
from services.audit import limits
from services.audit.checkpoint import NoteVerifier
from services.audit.verify import verify_bundle
from services.kit.auth import Role
from tests.support.audit_records import decision, largest_decision
from tests.support.stacks import service_channel

pytestmark = pytest.mark.integration

LARGEST = 60


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    st = Stack(tmp_path_factory.mktemp("audit-limits"), hub_id="limits")
    try:
        st.start_service(Role.AUDIT)
        yield st
    finally:
        st.stop()


async def refused(stub: pb_grpc.AuditServiceStub, d: pb.Decision) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.AppendDecisions(pb.AppendDecisionsRequest(decisions=[d]), timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return e.value.details() or ""


async def test_oversized_and_non_finite_fields_are_refused(stack: Stack) -> None:
    async with service_channel(stack, Role.AUDIT, Role.HUB) as channel:
        stub = pb_grpc.AuditServiceStub(channel)
        d = decision(1)
        d.output_label = "x" * 3_000_000  # the 3 MB label
        details = await refused(stub, d)
        assert details == f"decisions[0].output_label: at most {limits.MAX_TEXT_CHARS} characters"
        for bad in (math.nan, 7.5):
            d = decision(1)
            d.confidence = bad
            assert await refused(stub, d) == (
                "decisions[0].confidence: must be a finite number in [0, 1]"
            )
        d = decision(1)
        d.output_values.append(math.inf)
        assert await refused(stub, d) == "decisions[0].output_values[2]: must be finite"


async def test_bad_read_arguments_are_invalid_argument(stack: Stack) -> None:
    async with service_channel(stack, Role.AUDIT, Role.AUDITOR) as channel:
        stub = pb_grpc.AuditServiceStub(channel)
        bad_time = pb.QueryDecisionsRequest()
        bad_time.start_time.seconds = 2**62
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.QueryDecisions(bad_time, timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (e.value.details() or "").startswith("start_time: not a valid timestamp")
        export = pb.ExportDecisionsRequest()
        export.end_time.nanos = -5
        with pytest.raises(grpc.aio.AioRpcError) as e:
            async for _ in stub.ExportDecisions(export, timeout=10):
                pass
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (e.value.details() or "").startswith("end_time: not a valid timestamp")
        many = pb.ExportDecisionsRequest(consistency_from_sizes=list(range(65)))
        with pytest.raises(grpc.aio.AioRpcError) as e:
            async for _ in stub.ExportDecisions(many, timeout=10):
                pass
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "at most 64" in (e.value.details() or "")
    assert "Traceback" not in stack.procs["audit"].log_tail(400)


async def test_entries_at_every_limit_still_export_and_page(stack: Stack) -> None:
    async with service_channel(stack, Role.AUDIT, Role.HUB) as channel:
        stub = pb_grpc.AuditServiceStub(channel)
        for start in range(0, LARGEST, 20):
            batch = [largest_decision(i) for i in range(start, start + 20)]
            await stub.AppendDecisions(pb.AppendDecisionsRequest(decisions=batch), timeout=30)
        small = [decision(i) for i in range(100, 110)]
        await stub.AppendDecisions(pb.AppendDecisionsRequest(decisions=small), timeout=30)
    total = LARGEST + len(small)
    async with service_channel(stack, Role.AUDIT, Role.AUDITOR) as channel:
        stub = pb_grpc.AuditServiceStub(channel)
        chunks = [r.chunk async for r in stub.ExportDecisions(pb.ExportDecisionsRequest())]
        assert max(len(c) for c in chunks) < 4 * 1024 * 1024
        token, seen = "", 0
        while True:
            page = await stub.QueryDecisions(
                pb.QueryDecisionsRequest(page_size=1000, page_token=token), timeout=30
            )
            assert page.ByteSize() <= limits.MAX_PAGE_BYTES + 1024
            seen += len(page.entries)
            token = page.next_page_token
            if not token:
                break
    assert seen == total
    vkey = (stack.home / "data" / "audit" / "checkpoint.vkey").read_text().strip()
    lines = b"".join(chunks).splitlines(keepends=True)
    report = verify_bundle(lines, NoteVerifier.from_vkey(vkey))
    assert report.entries == total
