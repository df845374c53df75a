"""Unary calls over one bidi stream: the outcomes the unary calls had, over real gRPC.

The inference servicer behind the kit's mTLS server (roles, error mapping, metrics),
and a plain in-process server whose handler the test controls (order, concurrency,
a peer that stops or hangs).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from cli.stack import free_port as stack_free_port
from hub.peer_streams import StreamedAudit, StreamedInference
from roost.audit.v1 import audit_service_pb2 as audit_pb
from roost.audit.v1 import audit_service_pb2_grpc as audit_grpc
from roost.inference.v1 import inference_service_pb2 as pb
from services.kit.auth import Role
from services.kit.call_streams import StreamedCalls, _write_error, ordered_replies, status_code
from services.kit.client import aio_channel
from services.kit.errors import InvalidArgument, NotFound
from services.kit.server import RoostServer
from tests.unit.kit.test_server import eventually_handled, handled, served, stub, tensor

__all__ = ["served"]  # the fixture, imported


def batch(*rows: list[float], model: str = "linear") -> pb.PredictBatchRequest:
    return pb.PredictBatchRequest(model_name=model, inputs=[tensor(r) for r in rows])


async def test_predict_batch_over_the_stream_answers_like_the_unary_call(
    served: tuple[RoostServer, Path],
) -> None:
    server, certs = served
    s = stub(server, certs, Role.HUB)
    streamed = StreamedInference(s)
    before = handled("PredictBatch", "OK")
    try:
        unary = await s.PredictBatch(batch([1, 0, 0], [0, 0, 1]), timeout=5)
        over = await streamed.PredictBatch(batch([1, 0, 0], [0, 0, 1]), timeout=5)
        assert over == unary
        # Refusals are one reply each, with the unary call's code; the stream goes on.
        with pytest.raises(grpc.aio.AioRpcError) as bad_unary:
            await s.PredictBatch(batch([float("nan"), 0, 0]), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await streamed.PredictBatch(batch([float("nan"), 0, 0]), timeout=5)
        assert bad.value.code() == bad_unary.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert bad.value.details() == bad_unary.value.details()
        assert "NaN" in (bad.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await streamed.PredictBatch(batch([1, 0, 0], model="nope"), timeout=5)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        # Many at once: each gets its own answer.
        rows = [[float(i), 0.0, 0.0] for i in range(-20, 20)]
        got = await asyncio.gather(*(streamed.PredictBatch(batch(r), timeout=5) for r in rows))
        assert [g.predictions[0].label for g in got] == ["yes" if r[0] > 0 else "no" for r in rows]
        # Each request counts as a PredictBatch call (OK ones: 1 unary + 1 + 40 streamed).
        await eventually_handled("PredictBatch", "OK", before + 42)
        assert handled("PredictBatch", "INVALID_ARGUMENT") >= 1
    finally:
        await streamed.close()


async def test_only_the_hub_may_open_the_decision_streams(
    served: tuple[RoostServer, Path],
) -> None:
    server, certs = served
    streamed = StreamedInference(stub(server, certs, Role.PERSONALIZATION))
    try:
        # Every time: the first write waits for the server to accept the stream, so it
        # never races the refusal (grpc.aio would then say INTERNAL: grpc/grpc#36066).
        for _ in range(30):
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await streamed.PredictBatch(batch([1, 0, 0]), timeout=5)
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "personalization" in (denied.value.details() or "")
    finally:
        await streamed.close()


def test_a_write_on_a_stream_that_just_ended_is_unavailable_not_internal() -> None:
    core = grpc.aio.AioRpcError(
        grpc.StatusCode.INTERNAL,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(),
        details="Internal error from Core",
    )
    assert _write_error(core, "S").code() == grpc.StatusCode.UNAVAILABLE
    assert _write_error(asyncio.InvalidStateError("RPC already finished."), "S").code() == (
        grpc.StatusCode.UNAVAILABLE
    )
    # A status the peer really sent is kept.
    refused = grpc.aio.AioRpcError(
        grpc.StatusCode.PERMISSION_DENIED, grpc.aio.Metadata(), grpc.aio.Metadata(), "no"
    )
    assert _write_error(refused, "S") is refused


class Audit(audit_grpc.AuditServiceServicer):
    """AppendDecisionsStream over a handler the test steers by the decision ids."""

    def __init__(self) -> None:
        self.now = self.most = 0
        self.hang = asyncio.Event()
        self.hanging = asyncio.Event()

    async def handle(self, message: audit_pb.AppendDecisionsStreamRequest) -> Any:
        ids = [d.decision_id for d in message.request.decisions]
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            if ids == ["refuse"]:
                raise InvalidArgument("decisions[0]: refused")
            if ids == ["missing"]:
                raise NotFound("no such thing")
            if ids == ["bug"]:
                raise RuntimeError("secret household value 4242")
            if ids == ["hang"]:
                self.hanging.set()
                await self.hang.wait()
            await asyncio.sleep(0.002 * (10 - int(ids[0])) if ids[0].isdigit() else 0)
            return audit_pb.AppendDecisionsResponse(
                results=[audit_pb.AppendResult(decision_id=i) for i in ids]
            )
        finally:
            self.now -= 1

    async def AppendDecisionsStream(
        self, requests: AsyncIterable[audit_pb.AppendDecisionsStreamRequest], context: Any
    ) -> AsyncIterator[audit_pb.AppendDecisionsStreamResponse]:
        async for reply in ordered_replies(
            requests,
            self.handle,
            audit_pb.AppendDecisionsStreamResponse,
            context=context,
            service="test",
            method="Append",
        ):
            yield reply


async def serve(port: int = 0) -> tuple[grpc.aio.Server, int, Audit]:
    server = grpc.aio.server()
    audit = Audit()  # type: ignore[abstract]
    audit_grpc.add_AuditServiceServicer_to_server(audit, server)
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, port, audit


def append(*ids: str) -> audit_pb.AppendDecisionsRequest:
    return audit_pb.AppendDecisionsRequest(
        decisions=[audit_pb.Decision(decision_id=i) for i in ids]
    )


def client(port: int) -> tuple[grpc.aio.Channel, StreamedAudit]:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    return channel, StreamedAudit(audit_grpc.AuditServiceStub(channel))


async def test_replies_come_in_request_order_from_requests_handled_at_once() -> None:
    server, port, audit = await serve()
    channel, streamed = client(port)
    try:
        # Request "0" takes longest and "9" least: handled at once, answered in order.
        got = await asyncio.gather(
            *(streamed.AppendDecisions(append(str(i)), timeout=5) for i in range(10))
        )
        assert [g.results[0].decision_id for g in got] == [str(i) for i in range(10)]
        assert audit.most > 1
    finally:
        await streamed.close()
        await channel.close()
        await server.stop(None)


async def test_a_bug_is_internal_with_a_reference_and_no_value(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server, port, _ = await serve()
    channel, streamed = client(port)
    try:
        with caplog.at_level(logging.ERROR), pytest.raises(grpc.aio.AioRpcError) as bug:
            await streamed.AppendDecisions(append("bug"), timeout=5)
        assert bug.value.code() == grpc.StatusCode.INTERNAL
        assert "4242" not in (bug.value.details() or "")
        assert "ref" in (bug.value.details() or "")
        assert any("internal error in test/Append" in r.getMessage() for r in caplog.records)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await streamed.AppendDecisions(append("refuse"), timeout=5)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details() == "decisions[0]: refused"
        ok = await streamed.AppendDecisions(append("1"), timeout=5)  # the same stream goes on
        assert ok.results[0].decision_id == "1"
    finally:
        await streamed.close()
        await channel.close()
        await server.stop(None)


async def test_a_peer_that_goes_away_fails_the_waiting_calls_and_the_next_reconnects() -> None:
    server, port, audit = await serve()
    channel, streamed = client(port)
    try:
        assert (await streamed.AppendDecisions(append("1"), timeout=5)).results
        waiting = asyncio.create_task(streamed.AppendDecisions(append("hang"), timeout=10))
        await asyncio.wait_for(audit.hanging.wait(), 5)
        await server.stop(None)  # the peer dies with a call in flight
        with pytest.raises(grpc.aio.AioRpcError) as gone:
            await waiting
        assert gone.value.code() in {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
        # Back on the same port: the next call opens a new stream (waiting for readiness).
        server, _, _ = await serve(port)
        again = await streamed.AppendDecisions(append("2"), timeout=10)
        assert again.results[0].decision_id == "2"
    finally:
        await streamed.close()
        await channel.close()
        await server.stop(None)


async def test_a_call_that_times_out_is_deadline_exceeded_and_the_stream_starts_over() -> None:
    server, port, audit = await serve()
    channel, streamed = client(port)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as slow:
            await streamed.AppendDecisions(append("hang"), timeout=0.2)
        assert slow.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # The hung request's late reply can never be taken for the next one's.
        audit.hang.set()
        after = await streamed.AppendDecisions(append("3"), timeout=5)
        assert after.results[0].decision_id == "3"
    finally:
        await streamed.close()
        await channel.close()
        await server.stop(None)


async def test_a_call_waits_for_a_peer_that_is_not_up_yet() -> None:
    port = free_port()
    channel, streamed = client(port)
    try:
        call = asyncio.create_task(streamed.AppendDecisions(append("4"), timeout=10))
        await asyncio.sleep(0.5)
        assert not call.done()
        server, _, _ = await serve(port)
        assert (await call).results[0].decision_id == "4"
        await server.stop(None)
    finally:
        await streamed.close()
        await channel.close()


def test_status_codes_by_number() -> None:
    assert status_code(3) == grpc.StatusCode.INVALID_ARGUMENT
    assert status_code(14) == grpc.StatusCode.UNAVAILABLE
    assert status_code(999) == grpc.StatusCode.UNKNOWN


async def test_a_closed_client_fails_its_waiting_call() -> None:
    server, port, _ = await serve()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    calls: StreamedCalls[Any, Any] = StreamedCalls(
        audit_grpc.AuditServiceStub(channel).AppendDecisionsStream,
        "AppendDecisionsStream",
        lambda r: audit_pb.AppendDecisionsStreamRequest(request=r),
    )
    try:
        waiting = asyncio.create_task(calls(append("hang"), timeout=10))
        await asyncio.sleep(0.2)
        await calls.close()
        with pytest.raises(grpc.aio.AioRpcError) as closed:
            await waiting
        assert closed.value.code() == grpc.StatusCode.CANCELLED
    finally:
        await channel.close()
        await server.stop(None)


def free_port() -> int:
    """A local port nobody listens on (yet), and nothing else will take before the test
    binds it (the stack's: below the ephemeral range)."""
    return stack_free_port()


async def test_undecodable_bytes_on_the_decision_stream_end_it_invalid_argument(
    served: tuple[RoostServer, Path],
) -> None:
    """After a good request: its reply comes first, then the stream's status."""
    server, certs = served
    channel = aio_channel(
        f"127.0.0.1:{server.port}", certs_dir=certs, role=Role.HUB, server_role=Role.INFERENCE
    )
    try:
        stream = channel.stream_stream("/roost.inference.v1.InferenceService/PredictBatchStream")()
        good = pb.PredictBatchStreamRequest(request=batch([1, 0, 0]))
        await stream.write(good.SerializeToString())
        await stream.write(b"\xff\xff\xff")
        await stream.done_writing()
        first = pb.PredictBatchStreamResponse.FromString(await stream.read())
        assert first.response.predictions[0].label == "yes"
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stream.read()
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await channel.close()
