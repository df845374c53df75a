"""The update servicer as a thin gRPC layer: request checks, who may stage what, opaque
page tokens (``services.kit.paging``), and the rollout status it builds (health with
the homeowners' feedback accuracies)."""

from __future__ import annotations

from pathlib import Path

import pytest

from roost.update.v1 import update_service_pb2 as pb
from services.kit.auth import Role
from services.kit.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from services.modelstore.registry import Registry
from services.update.health import HealthPolicy, RoleHealth
from services.update.servicer import POLICY, UpdateServicer
from services.update.trail import Trail
from tests.support.update_fakes import (
    ACTIVE,
    APPLIED,
    CANDIDATE,
    FakeAudit,
    FakeFeedback,
    FakeStatus,
    ShadowStatus,
    registry_with_candidate,
)


class Context:
    """What the servicer reads of a call: the caller's certificate name."""

    def __init__(self, role: Role) -> None:
        self.role = role

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_common_name": [self.role.value.encode()]}


def make_servicer(
    registry: Registry, feedback: FakeFeedback | None = None
) -> tuple[UpdateServicer, FakeAudit]:
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
    return servicer, audit


@pytest.fixture
def servicer(tmp_path: Path) -> UpdateServicer:
    return make_servicer(registry_with_candidate(tmp_path))[0]


# --------------------------------------------------------------------------- status


async def test_without_personalization_the_status_has_no_feedback(tmp_path: Path) -> None:
    servicer, _ = make_servicer(registry_with_candidate(tmp_path))
    ((_, verdict),) = await servicer.rollout.check_health()
    assert verdict.healthy is True
    status = await servicer.GetRolloutStatus(
        pb.GetRolloutStatusRequest(model_name="occupancy"), None
    )
    assert status.status.health.active_feedback_accuracy == 0.0
    assert status.status.health.candidate_feedback_accuracy == 0.0


async def test_the_rollout_status_carries_the_feedback_accuracies(tmp_path: Path) -> None:
    feedback = FakeFeedback({ACTIVE: (0.9, 25), CANDIDATE: (0.875, 24)})
    servicer, _ = make_servicer(registry_with_candidate(tmp_path), feedback)
    status = (
        await servicer.GetRolloutStatus(pb.GetRolloutStatusRequest(model_name="occupancy"), None)
    ).status
    assert (status.stage, status.candidate_share) == (pb.ROLLOUT_STAGE_AB, 0.5)
    assert (status.active.version, status.candidate.version) == (ACTIVE, CANDIDATE)
    assert status.health.active_feedback_accuracy == pytest.approx(0.9)
    assert status.health.candidate_feedback_accuracy == pytest.approx(0.875)
    assert (status.health.active_feedback_count, status.health.candidate_feedback_count) == (
        25,
        24,
    )


async def test_the_status_says_what_the_verdict_rests_on(servicer: UpdateServicer) -> None:
    status = (
        await servicer.GetRolloutStatus(pb.GetRolloutStatusRequest(model_name="occupancy"), None)
    ).status
    assert status.verdict.startswith("healthy: 500 rows served live in A/B; errors 0.00% (0 of")
    assert (status.health.candidate_predictions, status.health.candidate_loaded) == (500, True)


async def test_a_model_without_a_rollout_has_no_health(servicer: UpdateServicer) -> None:
    status = (
        await servicer.GetRolloutStatus(pb.GetRolloutStatusRequest(model_name="comfort"), None)
    ).status
    assert status.stage == pb.ROLLOUT_STAGE_UNSPECIFIED
    assert not status.HasField("health")
    with pytest.raises(NotFound, match="not in the registry"):
        await servicer.GetRolloutStatus(pb.GetRolloutStatusRequest(model_name="nope"), None)
    with pytest.raises(InvalidArgument, match="model_name: required"):
        await servicer.GetRolloutStatus(pb.GetRolloutStatusRequest(), None)


# --------------------------------------------------------------------------- paging


async def test_versions_page_with_opaque_tokens_passed_back_unchanged(
    servicer: UpdateServicer,
) -> None:
    everything = await servicer.ListVersions(pb.ListVersionsRequest(), None)
    assert len(everything.versions) == 5  # four shipped models, one candidate
    assert everything.next_page_token == ""
    pages: list[pb.ModelVersion] = []
    request = pb.ListVersionsRequest(page_size=2)
    tokens: list[str] = []
    while True:
        response = await servicer.ListVersions(request, None)
        pages.extend(response.versions)
        if not response.next_page_token:
            break
        tokens.append(response.next_page_token)
        request.page_token = response.next_page_token
    assert pages == list(everything.versions)
    assert len(tokens) == 2
    assert not any(t.isdigit() for t in tokens)  # not an offset a client may edit
    # A token belongs to its query.
    other = pb.ListVersionsRequest(model_name="occupancy", page_size=2, page_token=tokens[0])
    with pytest.raises(InvalidArgument, match="page_token"):
        await servicer.ListVersions(other, None)
    for token in ("2", "garbage!"):
        with pytest.raises(InvalidArgument, match="page_token"):
            await servicer.ListVersions(pb.ListVersionsRequest(page_token=token), None)
    with pytest.raises(InvalidArgument, match="page_size: must be between 0 and 100"):
        await servicer.ListVersions(pb.ListVersionsRequest(page_size=101), None)


async def test_drift_pages_too(servicer: UpdateServicer) -> None:
    first = await servicer.GetDrift(pb.GetDriftRequest(model_name="occupancy", page_size=3), None)
    assert [f.feature for f in first.features] == ["f0", "f1", "f2"]
    rest = await servicer.GetDrift(
        pb.GetDriftRequest(model_name="occupancy", page_size=3, page_token=first.next_page_token),
        None,
    )
    assert [f.feature for f in rest.features] == ["f3", "f4"]
    assert rest.next_page_token == ""
    with pytest.raises(InvalidArgument, match="page_token"):
        await servicer.GetDrift(
            pb.GetDriftRequest(model_name="comfort", page_token=first.next_page_token), None
        )


async def test_without_a_repository_there_are_no_releases(servicer: UpdateServicer) -> None:
    with pytest.raises(FailedPrecondition, match="no model repository configured"):
        await servicer.CheckForUpdates(pb.CheckForUpdatesRequest(), None)
    with pytest.raises(FailedPrecondition, match="no model repository configured"):
        await servicer.Stage(
            pb.StageRequest(model_name="occupancy", version="1.5.0"), Context(Role.ADMIN)
        )


# --------------------------------------------------------------------------- requests


@pytest.mark.parametrize(
    ("request_", "role", "error", "match"),
    [
        (pb.StageRequest(version="1.2.0"), Role.ADMIN, InvalidArgument, "model_name"),
        (pb.StageRequest(model_name="occupancy"), Role.ADMIN, InvalidArgument, "version"),
        (
            pb.StageRequest(model_name="occupancy", version="1.2.0"),
            Role.PERSONALIZATION,
            PermissionDenied,
            "local candidates only",
        ),
        (
            pb.StageRequest(model_name="occupancy", local_bundle=b"tar"),
            Role.HUB,
            PermissionDenied,
            "come from the personalization service",
        ),
        (
            pb.StageRequest(model_name="occupancy", version="1.2.0", local_bundle=b"tar"),
            Role.PERSONALIZATION,
            InvalidArgument,
            "must be empty with local_bundle",
        ),
        (
            pb.StageRequest(model_name="occupancy", local_bundle=b"x" * ((1 << 20) + 1)),
            Role.PERSONALIZATION,
            InvalidArgument,
            "larger than",
        ),
        (
            pb.StageRequest(model_name="occupancy", local_bundle=b"tar"),
            Role.PERSONALIZATION,
            FailedPrecondition,
            "no local-candidate key",
        ),
    ],
)
async def test_stage_requests_are_checked(
    servicer: UpdateServicer,
    request_: pb.StageRequest,
    role: Role,
    error: type[Exception],
    match: str,
) -> None:
    with pytest.raises(error, match=match):
        await servicer.Stage(request_, Context(role))


@pytest.mark.parametrize(
    ("request_", "match"),
    [
        (pb.StartRolloutRequest(model_name="occupancy"), "stage: must be"),
        (
            pb.StartRolloutRequest(
                model_name="occupancy", stage=pb.ROLLOUT_STAGE_AB, candidate_share=1.5
            ),
            r"candidate_share: 1\.5 is not in \(0, 1\]",
        ),
        (pb.StartRolloutRequest(stage=pb.ROLLOUT_STAGE_SHADOW), "model_name: required"),
    ],
)
async def test_rollout_requests_are_checked(
    servicer: UpdateServicer, request_: pb.StartRolloutRequest, match: str
) -> None:
    with pytest.raises(InvalidArgument, match=match):
        await servicer.StartRollout(request_, None)


async def test_lifecycle_responses(tmp_path: Path) -> None:
    servicer, audit = make_servicer(registry_with_candidate(tmp_path, "staged"))
    admin = Context(Role.ADMIN)
    started = await servicer.StartRollout(
        pb.StartRolloutRequest(model_name="occupancy", stage=pb.ROLLOUT_STAGE_SHADOW), admin
    )
    assert (started.status.stage, started.status.candidate.version) == (
        pb.ROLLOUT_STAGE_SHADOW,
        CANDIDATE,
    )
    promoted = await servicer.Promote(pb.PromoteRequest(model_name="occupancy"), admin)
    assert (promoted.active.model.version, promoted.active.slot) == (CANDIDATE, pb.SLOT_ACTIVE)
    rolled = await servicer.Rollback(pb.RollbackRequest(model_name="occupancy", reason=" "), admin)
    # The shipped 1.0.0 is not a signed release.
    assert (rolled.active.model.version, rolled.active.source) == (ACTIVE, pb.SOURCE_SHIPPED)
    assert [d.policy.reason for d in audit.decisions][1:] == [
        # FakeStatus has no rows compared in shadow: too few to judge.
        "promoted by the owner; gate: undecided",
        "rolled back by the owner",
    ]


async def test_the_hub_takes_owner_steps_only_with_an_owner_request(tmp_path: Path) -> None:
    """The hub faces MQTT and Home Assistant: by itself it cannot move a candidate;
    relaying an owner's action it can, and the audit log names the request."""
    registry = registry_with_candidate(tmp_path, "staged")
    servicer, audit = make_servicer(registry)
    hub = Context(Role.HUB)
    before = registry.state("occupancy")
    shadow = pb.StartRolloutRequest(model_name="occupancy", stage=pb.ROLLOUT_STAGE_SHADOW)
    for call in (
        lambda: servicer.StartRollout(shadow, hub),
        lambda: servicer.Rollback(pb.RollbackRequest(model_name="occupancy"), hub),
        lambda: servicer.Stage(pb.StageRequest(model_name="occupancy", version="9.0.0"), hub),
    ):
        with pytest.raises(PermissionDenied, match="only to relay an owner's explicit request"):
            await call()
    assert registry.state("occupancy") == before
    assert audit.decisions == []
    with pytest.raises(InvalidArgument, match="owner_request_id: 1-64 characters"):
        await servicer.StartRollout(
            pb.StartRolloutRequest(
                model_name="occupancy",
                stage=pb.ROLLOUT_STAGE_SHADOW,
                owner_request_id="x" * 65,
            ),
            hub,
        )
    shadow.owner_request_id = "ha-1f2e"
    await servicer.StartRollout(shadow, hub)
    rollback = pb.RollbackRequest(model_name="occupancy", owner_request_id="ha-2")
    await servicer.Rollback(rollback, hub)
    assert [d.policy.reason for d in audit.decisions] == [
        "started by the owner (owner request ha-1f2e relayed by the hub)",
        "rolled back by the owner (owner request ha-2 relayed by the hub)",
    ]


async def test_the_hub_never_promotes_not_even_for_an_owner(tmp_path: Path) -> None:
    """Home Assistant offers Install and Roll back, never Promote: the hub's Promote is
    refused with or without an owner's request id or force, and nothing is audited."""
    registry = registry_with_candidate(tmp_path, "shadow")
    servicer, audit = make_servicer(registry)
    before = registry.state("occupancy")
    for request in (
        pb.PromoteRequest(model_name="occupancy"),
        pb.PromoteRequest(model_name="occupancy", owner_request_id="ha-2"),
        pb.PromoteRequest(model_name="occupancy", owner_request_id="ha-2", force=True),
    ):
        with pytest.raises(PermissionDenied, match="the hub identity may not promote"):
            await servicer.Promote(request, Context(Role.HUB))
    assert registry.state("occupancy") == before
    assert audit.decisions == []
    assert POLICY["/roost.update.v1.UpdateService/Promote"] == frozenset({Role.ADMIN})


class FailingShadow(FakeStatus):
    """A candidate in shadow that errs on a third of the inputs: the gate fails it."""

    async def health(self, name: str) -> tuple[RoleHealth | None, RoleHealth | None]:
        return (
            RoleHealth(ACTIVE, 1000, 0, 0.001, latency_calls=1000),
            RoleHealth(
                CANDIDATE,
                400,
                200,
                0.001,
                agreement=0.97,
                compared=400,
                generation=APPLIED,
                latency_calls=400,
            ),
        )


async def test_an_owner_cannot_promote_a_failing_candidate_without_force(tmp_path: Path) -> None:
    registry = registry_with_candidate(tmp_path, "shadow")
    servicer, audit = make_servicer(registry)
    servicer.rollout.status = FailingShadow()
    admin = Context(Role.ADMIN)
    before = registry.state("occupancy")
    with pytest.raises(FailedPrecondition) as refused:
        await servicer.Promote(pb.PromoteRequest(model_name="occupancy"), admin)
    assert str(refused.value).startswith(
        f"model occupancy: the health gate's verdict on candidate {CANDIDATE} is failing"
        " (unhealthy: "
    )
    assert "roost models promote --force" in str(refused.value)
    assert registry.state("occupancy") == before
    assert audit.decisions == []
    # Forced by the admin: promoted, and the audit log says it was forced.
    promoted = await servicer.Promote(pb.PromoteRequest(model_name="occupancy", force=True), admin)
    assert promoted.active.model.version == CANDIDATE
    assert [d.policy.reason for d in audit.decisions] == [
        "promoted by the owner; FORCED over the health gate's failing verdict"
    ]


async def test_an_owner_promotion_records_the_gate_verdict(tmp_path: Path) -> None:
    servicer, audit = make_servicer(registry_with_candidate(tmp_path, "shadow"))
    servicer.rollout.status = ShadowStatus()
    await servicer.Promote(
        pb.PromoteRequest(model_name="occupancy", owner_request_id="cli-7"), Context(Role.ADMIN)
    )
    assert [d.policy.reason for d in audit.decisions] == [
        "promoted by the owner (admin, request cli-7); gate: healthy"
    ]


class Unreachable(FakeStatus):
    async def health(self, name: str) -> tuple[RoleHealth | None, RoleHealth | None]:
        raise Unavailable("inference: GetModelStatus: connection refused")


async def test_without_a_verdict_only_force_promotes(tmp_path: Path) -> None:
    registry = registry_with_candidate(tmp_path, "shadow")
    servicer, audit = make_servicer(registry)
    servicer.rollout.status = Unreachable()
    admin = Context(Role.ADMIN)
    with pytest.raises(Unavailable):
        await servicer.Promote(pb.PromoteRequest(model_name="occupancy"), admin)
    assert registry.state("occupancy").candidate == CANDIDATE
    await servicer.Promote(pb.PromoteRequest(model_name="occupancy", force=True), admin)
    assert registry.state("occupancy").active == CANDIDATE
    assert [d.policy.reason for d in audit.decisions] == [
        "promoted by the owner; FORCED without a health-gate verdict (inference did not answer)"
    ]
