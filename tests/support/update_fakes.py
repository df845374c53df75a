"""Fakes of the update service's peers (audit, inference status, personalization
feedback) and a registry with a candidate in rollout, for the update unit tests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import grpc

from models.manifest import shipped_models_dir
from roost.audit.v1 import audit_service_pb2 as audit_pb
from roost.update.v1 import update_service_pb2 as pb
from services.modelstore.registry import Registry
from services.update.health import RoleHealth
from tests.support.model_versions import occupancy_version

ACTIVE, CANDIDATE = "1.0.0", "1.1.0"


class FakeAudit:
    """``AppendDecisions`` that records every decision; ``failures`` are raised first,
    one per call."""

    def __init__(self, failures: Sequence[grpc.StatusCode] = ()) -> None:
        self.decisions: list[audit_pb.Decision] = []
        self.failures = list(failures)
        self.calls = 0

    async def AppendDecisions(
        self, request: audit_pb.AppendDecisionsRequest, timeout: float
    ) -> audit_pb.AppendDecisionsResponse:
        self.calls += 1
        if self.failures:
            raise rpc_error(self.failures.pop(0), "the audit log says no")
        self.decisions.extend(request.decisions)
        return audit_pb.AppendDecisionsResponse(
            results=[audit_pb.AppendResult(index=len(self.decisions) - 1)]
        )


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    """A failed call as a gRPC client sees it."""
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


# Inference has applied every registry generation the tests write.
APPLIED = 1 << 30


class FakeStatus:
    """Inference's rolling stats: plenty of healthy A/B traffic for both versions."""

    async def health(self, name: str) -> tuple[RoleHealth | None, RoleHealth | None]:
        return (
            RoleHealth(ACTIVE, 1000, 0, 0.001, latency_calls=1000),
            RoleHealth(CANDIDATE, 500, 0, 0.001, generation=APPLIED, latency_calls=500),
        )

    async def drift(self, name: str) -> list[pb.FeatureDrift]:
        return [pb.FeatureDrift(feature=f"f{i}", psi=0.01 * i) for i in range(5)]


class ShadowStatus(FakeStatus):
    """A candidate (``version``) in shadow that agrees with active on most inputs."""

    def __init__(self, version: str = CANDIDATE) -> None:
        self.version = version

    async def health(self, name: str) -> tuple[RoleHealth | None, RoleHealth | None]:
        return (
            RoleHealth(ACTIVE, 1000, 0, 0.001, latency_calls=1000),
            RoleHealth(
                self.version,
                500,
                0,
                0.001,
                agreement=0.97,
                compared=500,
                generation=APPLIED,
                latency_calls=500,
            ),
        )


@dataclass
class FakeFeedback:
    """Personalization's scores: the same ``scores`` for every question, which it keeps."""

    scores: dict[str, tuple[float, int]] = field(default_factory=dict)
    calls: list[tuple[str, tuple[str, ...], datetime | None]] = field(default_factory=list)

    async def accuracy(
        self, name: str, versions: Sequence[str], since: datetime | None
    ) -> Mapping[str, tuple[float, int]]:
        self.calls.append((name, tuple(versions), since))
        return self.scores


def add_occupancy(registry: Registry, tmp: Path, version: str) -> None:
    """Installs the shipped occupancy model as ``version`` (from a signed release)."""
    registry.add_version(occupancy_version(tmp, version), "tuf")


def registry_with_candidate(tmp: Path, stage: str = "ab") -> Registry:
    """The shipped models, with occupancy ``CANDIDATE`` in ``stage`` (A/B: half of the
    entities) beside ``ACTIVE``."""
    registry = Registry(tmp / "models")
    registry.bootstrap(shipped_models_dir())
    assert registry.state("occupancy").active == ACTIVE
    add_occupancy(registry, tmp, CANDIDATE)
    registry.stage("occupancy", CANDIDATE)
    if stage == "ab":
        registry.start_rollout("occupancy", "ab", 0.5)
    elif stage == "shadow":
        registry.start_rollout("occupancy", "shadow")
    return registry
