"""The update service's view of its peers: inference's rolling health (``GetModelStatus``,
its failures translated by ``services.kit.peers``) and personalization's scores on the
homeowners' labels (``EvaluateVersions`` against a real in-process gRPC server: the
request, the cache, an outage logged once and counted)."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY

from roost.inference.v1 import inference_service_pb2 as inf_pb
from roost.personalization.v1 import personalization_service_pb2 as pers_pb
from roost.personalization.v1 import personalization_service_pb2_grpc as pers_grpc
from services.kit.errors import NotFound, Unavailable
from services.update.status import InferenceStatus, PersonalizationFeedback
from tests.support.update_fakes import ACTIVE, CANDIDATE, rpc_error

# --------------------------------------------------------------------------- inference


def inference_status(stub: object) -> InferenceStatus:
    status = InferenceStatus(grpc.aio.insecure_channel("127.0.0.1:9"))  # never dialled
    status._stub = stub  # type: ignore[assignment]
    return status


class FailingInference:
    def __init__(self, code: grpc.StatusCode) -> None:
        self.code = code

    async def GetModelStatus(
        self, request: inf_pb.GetModelStatusRequest, timeout: float
    ) -> inf_pb.GetModelStatusResponse:
        raise rpc_error(self.code, f"model {request.model_name!r} is not loaded")


@pytest.mark.parametrize(
    ("code", "error"),
    [
        # A refusal keeps its meaning (never a retryable Unavailable) ...
        (grpc.StatusCode.NOT_FOUND, NotFound),
        # ... and an outage stays retryable.
        (grpc.StatusCode.UNAVAILABLE, Unavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, Unavailable),
    ],
)
async def test_inference_failures_are_translated_once(
    code: grpc.StatusCode, error: type[Exception]
) -> None:
    status = inference_status(FailingInference(code))
    with pytest.raises(error, match=rf"inference service: GetModelStatus failed \({code.name}\)"):
        await status.health("occupancy")
    with pytest.raises(error, match="is not loaded"):  # the details name only the model
        await status.drift("occupancy")


async def test_inference_status_becomes_role_health_and_drift() -> None:
    class Inference:
        async def GetModelStatus(
            self, request: inf_pb.GetModelStatusRequest, timeout: float
        ) -> inf_pb.GetModelStatusResponse:
            return inf_pb.GetModelStatusResponse(
                active=inf_pb.RoleHealth(loaded=True, predictions=10, errors=1),
                drift=[inf_pb.FeatureDrift(feature="co2", psi=0.3, ks=0.1, alert=True)],
            )

    status = inference_status(Inference())
    active, candidate = await status.health("occupancy")
    assert candidate is None
    assert active is not None
    assert (active.predictions, active.error_rate, active.agreement) == (10, 1 / 11, 1.0)
    (drift,) = await status.drift("occupancy")
    assert (drift.feature, drift.alert) == ("co2", True)


# --------------------------------------------------------------------------- personalization


class FakePersonalization(pers_grpc.PersonalizationServiceServicer):
    def __init__(self) -> None:
        self.requests: list[pers_pb.EvaluateVersionsRequest] = []

    async def EvaluateVersions(
        self, request: pers_pb.EvaluateVersionsRequest, context: Any
    ) -> pers_pb.EvaluateVersionsResponse:
        self.requests.append(request)
        return pers_pb.EvaluateVersionsResponse(
            results=[
                pers_pb.VersionAccuracy(version=v, accuracy=0.5 + 0.25 * i, count=30)
                for i, v in enumerate(request.versions)
            ]
        )


@dataclass
class Server:
    port: int
    servicer: FakePersonalization


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    srv = grpc.aio.server()
    fake = FakePersonalization()  # type: ignore[abstract]
    pers_grpc.add_PersonalizationServiceServicer_to_server(fake, srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    await srv.start()
    yield Server(port, fake)
    await srv.stop(None)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_scores_are_fetched_then_reused_until_refresh(server: Server) -> None:
    clock = Clock()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        feedback = PersonalizationFeedback(channel, refresh_seconds=30, clock=clock)
        since = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
        scores = await feedback.accuracy("occupancy", [ACTIVE, CANDIDATE], since)
        assert scores == {ACTIVE: (0.5, 30), CANDIDATE: (0.75, 30)}
        (request,) = server.servicer.requests
        assert (request.model_name, list(request.versions)) == ("occupancy", [ACTIVE, CANDIDATE])
        assert request.since.ToDatetime(tzinfo=UTC) == since
        assert list(request.sources) == []  # the service default: feedback, override, sensor
        clock.now = 29
        assert await feedback.accuracy("occupancy", [ACTIVE, CANDIDATE], since) == scores
        assert len(server.servicer.requests) == 1
        # Another stage (another since) or another candidate: asked again.
        later = since + timedelta(hours=1)
        await feedback.accuracy("occupancy", [ACTIVE, CANDIDATE], later)
        assert len(server.servicer.requests) == 2
        clock.now = 60
        await feedback.accuracy("occupancy", [ACTIVE, CANDIDATE], later)
        assert len(server.servicer.requests) == 3
        # No since: every label.
        await feedback.accuracy("routine", ["2.0.0"], None)
        assert not server.servicer.requests[-1].HasField("since")


def unavailable_count(model: str) -> float:
    value = REGISTRY.get_sample_value("roost_update_feedback_unavailable_total", {"model": model})
    return value or 0.0


async def test_an_unreachable_personalization_means_no_scores_logged_once_and_counted(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="services.update.status")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    clock = Clock()
    before = unavailable_count("occupancy")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{dead_port}") as channel:
        feedback = PersonalizationFeedback(channel, refresh_seconds=1, timeout=2, clock=clock)
        for i in range(3):
            clock.now = 10.0 * i
            assert await feedback.accuracy("occupancy", [ACTIVE, CANDIDATE], None) == {}
        # Cached between refreshes, like an answer.
        assert await feedback.accuracy("occupancy", [ACTIVE, CANDIDATE], None) == {}
    assert unavailable_count("occupancy") == before + 3
    lines = [r for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].levelno == logging.INFO
    assert "runs without them" in lines[0].getMessage()
    # It answers again: said once, and scores flow.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        feedback._stub = pers_grpc.PersonalizationServiceStub(channel)
        clock.now = 100
        scores = await feedback.accuracy("occupancy", [ACTIVE, CANDIDATE], None)
        assert scores[CANDIDATE] == (0.75, 30)
    assert any("available again" in r.getMessage() for r in caplog.records)


async def test_a_refusing_personalization_means_no_scores_and_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Refusing:
        async def EvaluateVersions(
            self, request: pers_pb.EvaluateVersionsRequest, timeout: float
        ) -> pers_pb.EvaluateVersionsResponse:
            raise rpc_error(grpc.StatusCode.PERMISSION_DENIED, "update may not evaluate")

    caplog.set_level(logging.INFO, logger="services.update.status")
    clock = Clock()
    before = unavailable_count("comfort")
    async with grpc.aio.insecure_channel("127.0.0.1:9") as channel:
        feedback = PersonalizationFeedback(channel, refresh_seconds=1, clock=clock)
        feedback._stub = Refusing()  # type: ignore[assignment]
        for i in range(2):
            clock.now = 10.0 * i
            assert await feedback.accuracy("comfort", [ACTIVE, CANDIDATE], None) == {}
    assert unavailable_count("comfort") == before + 2
    (line,) = [r for r in caplog.records if "unavailable" in r.getMessage()]
    assert line.levelno == logging.WARNING
    assert "personalization service: EvaluateVersions failed (PERMISSION_DENIED)" in (
        line.getMessage()
    )
