"""The health gate's outcomes: accuracy on homeowners' labels, scored by personalization.

The update servicer with a fake inference status and a fake personalization fills
RoleHealth.feedback_accuracy/count, rolls back a candidate that does much worse on at
least ``min_feedback`` labels (never on fewer, never without personalization) and
reports the accuracies in GetRolloutStatus. PersonalizationFeedback against a real
in-process gRPC server: the request, the cache, an outage logged once and counted.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY

from models.manifest import MANIFEST_FILE, shipped_models_dir
from roost.audit.v1 import audit_service_pb2 as audit_pb
from roost.personalization.v1 import personalization_service_pb2 as pers_pb
from roost.personalization.v1 import personalization_service_pb2_grpc as pers_grpc
from roost.update.v1 import update_service_pb2 as pb
from services.modelstore.registry import Registry
from services.update.health import HealthPolicy, RoleHealth, RolloutSchedule
from services.update.servicer import UpdateServicer
from services.update.status import PersonalizationFeedback
from services.update.trail import Trail

ACTIVE, CANDIDATE = "1.0.0", "1.1.0"


class FakeAudit:
    def __init__(self) -> None:
        self.decisions: list[audit_pb.Decision] = []

    async def AppendDecisions(
        self, request: audit_pb.AppendDecisionsRequest, timeout: float
    ) -> audit_pb.AppendDecisionsResponse:
        self.decisions.extend(request.decisions)
        return audit_pb.AppendDecisionsResponse(
            results=[audit_pb.AppendResult(index=len(self.decisions) - 1)]
        )


class FakeStatus:
    """Inference's rolling stats: plenty of healthy A/B traffic for both versions."""

    async def health(self, name: str) -> tuple[RoleHealth | None, RoleHealth | None]:
        return (
            RoleHealth(ACTIVE, predictions=1000, errors=0, p99_seconds=0.001),
            RoleHealth(CANDIDATE, predictions=500, errors=0, p99_seconds=0.001),
        )

    async def drift(self, name: str) -> list[pb.FeatureDrift]:
        return []


@dataclass
class FakeFeedback:
    scores: dict[str, tuple[float, int]] = field(default_factory=dict)
    calls: list[tuple[str, tuple[str, ...], datetime | None]] = field(default_factory=list)

    async def accuracy(
        self, name: str, versions: Sequence[str], since: datetime | None
    ) -> Mapping[str, tuple[float, int]]:
        self.calls.append((name, tuple(versions), since))
        return self.scores


@dataclass
class Gate:
    servicer: UpdateServicer
    registry: Registry
    audit: FakeAudit
    feedback: FakeFeedback


def add_occupancy(registry: Registry, tmp: Path, version: str) -> None:
    dst = tmp / f"occupancy-{version}"
    shutil.copytree(shipped_models_dir() / "occupancy", dst)
    raw = json.loads((dst / MANIFEST_FILE).read_text())
    raw["version"] = version
    (dst / MANIFEST_FILE).write_text(json.dumps(raw))
    registry.add_version(dst, "tuf")


def make_gate(tmp_path: Path, feedback: FakeFeedback | None) -> Gate:
    registry = Registry(tmp_path / "models")
    registry.bootstrap(shipped_models_dir())
    assert registry.state("occupancy").active == ACTIVE
    add_occupancy(registry, tmp_path, CANDIDATE)
    registry.stage("occupancy", CANDIDATE)
    registry.start_rollout("occupancy", "ab", 0.5)
    audit = FakeAudit()
    servicer = UpdateServicer(
        registry,
        Trail(audit, "test", 5.0),  # type: ignore[arg-type]
        updater=None,
        status=FakeStatus(),
        local_public_key=None,
        max_bundle_bytes=1 << 20,
        health_policy=HealthPolicy(min_compared=100, min_feedback=20),
        feedback=feedback,
    )
    return Gate(servicer, registry, audit, feedback or FakeFeedback())


async def test_a_candidate_much_worse_on_the_labels_is_rolled_back(tmp_path: Path) -> None:
    gate = make_gate(tmp_path, FakeFeedback({ACTIVE: (0.95, 40), CANDIDATE: (0.40, 40)}))
    started = gate.registry.state("occupancy").stage_started_at
    ((name, verdict),) = await gate.servicer.check_health()
    assert name == "occupancy"
    assert verdict.healthy is False
    assert "feedback accuracy 40.0% vs active 95.0%" in verdict.summary()
    # Asked for both versions, on the labels observed since the A/B stage started.
    assert gate.feedback.calls == [
        ("occupancy", (ACTIVE, CANDIDATE), datetime.fromisoformat(started))
    ]
    state = gate.registry.state("occupancy")
    assert (state.active, state.candidate, state.stage) == (ACTIVE, None, "none")
    (step,) = gate.audit.decisions
    assert step.action == "update.rollback"
    assert step.actor == audit_pb.ACTOR_AUTOMATIC
    assert "health gate: feedback accuracy 40.0%" in step.policy.reason


@pytest.mark.parametrize(
    "scores",
    [
        # Too few labels: a handful never triggers a rollback.
        {ACTIVE: (1.0, 19), CANDIDATE: (0.0, 19)},
        {ACTIVE: (1.0, 50), CANDIDATE: (0.0, 5)},
        # Within the allowed drop.
        {ACTIVE: (0.90, 50), CANDIDATE: (0.86, 50)},
        # Personalization did not answer (or has no labels).
        {},
        {ACTIVE: (0.0, 0), CANDIDATE: (0.0, 0)},
    ],
)
async def test_no_rollback_on_too_few_labels_a_small_drop_or_no_scores(
    tmp_path: Path, scores: dict[str, tuple[float, int]]
) -> None:
    gate = make_gate(tmp_path, FakeFeedback(scores))
    ((_, verdict),) = await gate.servicer.check_health()
    assert verdict.healthy is True, verdict.summary()
    assert gate.registry.state("occupancy").candidate == CANDIDATE
    assert gate.audit.decisions == []


async def test_without_personalization_the_gate_works_as_before(tmp_path: Path) -> None:
    gate = make_gate(tmp_path, None)
    ((_, verdict),) = await gate.servicer.check_health()
    assert verdict.healthy is True
    status = await gate.servicer.GetRolloutStatus(
        pb.GetRolloutStatusRequest(model_name="occupancy"), None
    )
    assert status.status.health.active_feedback_accuracy == 0.0
    assert status.status.health.candidate_feedback_accuracy == 0.0


async def test_the_rollout_status_carries_the_feedback_accuracies(tmp_path: Path) -> None:
    gate = make_gate(tmp_path, FakeFeedback({ACTIVE: (0.9, 25), CANDIDATE: (0.875, 24)}))
    status = (
        await gate.servicer.GetRolloutStatus(
            pb.GetRolloutStatusRequest(model_name="occupancy"), None
        )
    ).status
    assert status.health.active_feedback_accuracy == pytest.approx(0.9)
    assert status.health.candidate_feedback_accuracy == pytest.approx(0.875)
    assert (status.health.active_feedback_count, status.health.candidate_feedback_count) == (
        25,
        24,
    )


# --------------------------------------------------------------------------- the client


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


async def test_a_healthy_candidate_advances_by_itself(tmp_path: Path) -> None:
    """shadow -> A/B -> active, each step once the stage has been healthy long enough."""
    gate = make_gate(tmp_path, FakeFeedback({ACTIVE: (0.9, 25), CANDIDATE: (0.9, 25)}))
    gate.registry.rollback("occupancy")
    gate.registry.stage("occupancy", CANDIDATE)
    gate.registry.start_rollout("occupancy", "shadow")

    class ShadowStatus(FakeStatus):
        async def health(self, name: str) -> tuple[RoleHealth | None, RoleHealth | None]:
            return (
                RoleHealth(ACTIVE, predictions=1000, errors=0, p99_seconds=0.001),
                RoleHealth(CANDIDATE, 500, 0, 0.001, agreement=0.97, compared=500),
            )

    gate.servicer._status = ShadowStatus()
    # Not due yet: nothing moves.
    gate.servicer._schedule = RolloutSchedule(shadow_seconds=3600, ab_share=0.3, ab_seconds=3600)
    await gate.servicer.check_health()
    assert gate.registry.state("occupancy").stage == "shadow"
    # Due: shadow -> A/B at the schedule's share, then A/B -> active.
    gate.servicer._schedule = RolloutSchedule(shadow_seconds=0, ab_share=0.3, ab_seconds=0)
    await gate.servicer.check_health()
    s = gate.registry.state("occupancy")
    assert (s.stage, s.share) == ("ab", pytest.approx(0.3))
    await gate.servicer.check_health()
    s = gate.registry.state("occupancy")
    assert (s.active, s.candidate) == (CANDIDATE, None)
    steps = [(d.action, d.actor) for d in gate.audit.decisions]
    assert steps[-2:] == [
        ("update.ab", audit_pb.ACTOR_AUTOMATIC),
        ("update.promote", audit_pb.ACTOR_AUTOMATIC),
    ]
    assert "healthy for" in gate.audit.decisions[-1].policy.reason


async def test_without_the_schedule_a_healthy_candidate_waits(tmp_path: Path) -> None:
    gate = make_gate(tmp_path, FakeFeedback())
    gate.servicer._schedule = RolloutSchedule(enabled=False, shadow_seconds=0, ab_seconds=0)
    await gate.servicer.check_health()
    assert gate.registry.state("occupancy").stage == "ab"
    assert gate.audit.decisions == []
