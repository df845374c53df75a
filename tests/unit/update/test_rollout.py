"""The rollout state machine without gRPC: the allowed and refused transitions, the
health gate's automatic steps, and :class:`Rollout` taking steps on a real registry with
a fake audit log (audited first, nothing applied that the audit did not record) and
fake inference and personalization peers (the gate's outcomes on homeowners' labels)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from roost.audit.v1 import audit_service_pb2 as audit_pb
from services.kit.errors import (
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    Unavailable,
)
from services.modelstore.reader import SlotState, VersionInfo
from services.modelstore.registry import Registry
from services.update.health import HealthPolicy, RoleHealth, RolloutSchedule, Verdict
from services.update.rollout import Rollout
from services.update.trail import Trail
from services.update.transitions import (
    GateAction,
    ab_entry_check,
    gate_action,
    promote_step,
    rollback_step,
    stage_step,
    start_step,
)
from tests.support.update_fakes import (
    ACTIVE,
    CANDIDATE,
    FakeAudit,
    FakeFeedback,
    FakeStatus,
    ShadowStatus,
    add_occupancy,
    registry_with_candidate,
)

NAME = "occupancy"
STARTED = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def slots(stage: str = "none", candidate: str | None = None, **kw: object) -> SlotState:
    fields: dict[str, object] = {"stage_started_at": STARTED.isoformat(), **kw}
    return SlotState(active=ACTIVE, candidate=candidate, stage=stage, **fields)  # type: ignore[arg-type]


def info(version: str, source: str = "tuf") -> VersionInfo:
    return VersionInfo(NAME, version, "0" * 64, source, STARTED.isoformat(), Path())  # type: ignore[arg-type]


# --------------------------------------------------------------------------- transitions


def test_staging_a_newer_version_is_allowed_unless_a_candidate_is_running() -> None:
    step = stage_step(NAME, slots(), info(CANDIDATE, "local"))
    assert step is not None
    assert (step.action, step.version, step.name) == ("update.stage", CANDIDATE, "stage")
    assert step.summary == f"{CANDIDATE} staged (local)"
    assert step.reason == f"candidate {CANDIDATE} staged beside active {ACTIVE}"
    # A staged (not yet running) candidate may be replaced by a newer one.
    assert stage_step(NAME, slots("staged", CANDIDATE), info("1.2.0")) is not None
    # The current candidate again: nothing to do.
    assert stage_step(NAME, slots("shadow", CANDIDATE), info(CANDIDATE)) is None


@pytest.mark.parametrize(
    ("state", "version", "match"),
    [
        (slots(), ACTIVE, "not newer than active 1.0.0 .*use Rollback"),
        (slots(), "0.9.0", "rollback protection"),
        (slots("shadow", CANDIDATE), "1.2.0", "is in shadow; promote or roll it back"),
        (slots("ab", CANDIDATE, share=0.5), "1.2.0", "is in ab; promote or roll it back"),
    ],
)
def test_staging_is_refused(state: SlotState, version: str, match: str) -> None:
    with pytest.raises(FailedPrecondition, match=match):
        stage_step(NAME, state, info(version))


def test_starting_needs_a_candidate() -> None:
    with pytest.raises(FailedPrecondition, match="no candidate: stage one first"):
        start_step(NAME, slots(), "shadow", 0.0)
    shadow = start_step(NAME, slots("staged", CANDIDATE), "shadow", 0.0)
    assert (shadow.action, shadow.version) == ("update.shadow", CANDIDATE)
    assert shadow.summary == f"{CANDIDATE} in shadow"
    assert shadow.reason == f"candidate {CANDIDATE} moves to shadow; active {ACTIVE}"
    ab = start_step(NAME, slots("shadow", CANDIDATE), "ab", 0.3, reason="healthy for 60 min")
    assert (ab.action, ab.summary) == ("update.ab", f"{CANDIDATE} in A/B with 30% of entities")
    assert ab.reason == "healthy for 60 min"


@pytest.mark.parametrize("stage", ["shadow", "ab"])
def test_a_running_candidate_may_be_promoted(stage: str) -> None:
    step = promote_step(NAME, slots(stage, CANDIDATE, share=0.5), "by hand")
    assert (step.action, step.version, step.reason) == ("update.promote", CANDIDATE, "by hand")
    assert step.summary == f"{CANDIDATE} active (was {ACTIVE})"


@pytest.mark.parametrize(
    ("state", "match"),
    [
        (slots(), "has no candidate to promote"),
        (slots("staged", CANDIDATE), "is only staged; run it in shadow or A/B"),
    ],
)
def test_promotion_is_refused(state: SlotState, match: str) -> None:
    with pytest.raises(FailedPrecondition, match=match):
        promote_step(NAME, state, "by hand")


def test_rollback_withdraws_the_candidate_or_restores_previous() -> None:
    withdraw = rollback_step(NAME, slots("staged", CANDIDATE, previous="0.9.0"), "bad")
    assert (withdraw.version, withdraw.summary) == (CANDIDATE, f"candidate {CANDIDATE} withdrawn")
    restore = rollback_step(NAME, slots(previous="0.9.0"), "bad")
    assert (restore.action, restore.version) == ("update.rollback", ACTIVE)
    assert restore.summary == f"0.9.0 active again (was {ACTIVE})"
    with pytest.raises(FailedPrecondition, match="nothing to roll back to"):
        rollback_step(NAME, slots(), "bad")


# --------------------------------------------------------------------------- the gate's steps

HEALTHY = Verdict(True, ("500 predictions compared",))
SCHEDULE = RolloutSchedule(shadow_seconds=3600, ab_share=0.3, ab_seconds=7200)


@pytest.mark.parametrize(
    ("stage", "after", "verdict", "schedule", "expected"),
    [
        ("ab", 0, Verdict(False, ("slow", "wrong")), SCHEDULE, ("rollback", 0.0)),
        ("shadow", 10**6, Verdict(None, ("3 of 200",)), SCHEDULE, None),
        ("shadow", 3599, HEALTHY, SCHEDULE, None),
        ("shadow", 3600, HEALTHY, SCHEDULE, ("ab", 0.3)),
        ("ab", 7199, HEALTHY, SCHEDULE, None),
        ("ab", 7200, HEALTHY, SCHEDULE, ("promote", 0.0)),
        ("ab", 10**6, HEALTHY, RolloutSchedule(enabled=False), None),
    ],
)
def test_the_gate_rolls_back_the_unhealthy_and_moves_on_the_healthy_when_due(
    stage: str,
    after: int,
    verdict: Verdict,
    schedule: RolloutSchedule,
    expected: tuple[str, float] | None,
) -> None:
    state = slots(stage, CANDIDATE, share=0.5 if stage == "ab" else 0.0)
    action = gate_action(state, verdict, schedule, STARTED + timedelta(seconds=after))
    assert (action and (action.step, action.share)) == expected


def test_the_gate_explains_its_steps() -> None:
    state = slots("shadow", CANDIDATE)
    assert gate_action(state, Verdict(False, ("slow", "wrong")), SCHEDULE, STARTED) == GateAction(
        "rollback", "health gate: slow; wrong"
    )
    action = gate_action(state, HEALTHY, SCHEDULE, STARTED + timedelta(minutes=61))
    assert action is not None
    assert action.reason.startswith("healthy for 61 min (healthy")
    # Without a start time nothing is due.
    assert (
        gate_action(slots("shadow", CANDIDATE, stage_started_at=""), HEALTHY, SCHEDULE, STARTED)
        is None
    )


# --------------------------------------------------------------------------- taking steps


@dataclass
class Env:
    rollout: Rollout
    registry: Registry
    audit: FakeAudit
    feedback: FakeFeedback


def make_env(
    tmp_path: Path, feedback: FakeFeedback | None = None, *, stage: str = "ab", **kw: object
) -> Env:
    registry = registry_with_candidate(tmp_path, stage)
    audit = FakeAudit()
    rollout = Rollout(
        registry,
        Trail(audit, "test", 5.0),  # type: ignore[arg-type]
        status=FakeStatus(),
        health_policy=HealthPolicy(min_compared=100, min_feedback=20),
        feedback=feedback,
        **kw,  # type: ignore[arg-type]
    )
    return Env(rollout, registry, audit, feedback or FakeFeedback())


def steps(env: Env) -> list[tuple[str, str, int]]:
    return [(d.action, d.model.version, d.actor) for d in env.audit.decisions]


async def test_every_step_is_audited_before_it_is_applied(tmp_path: Path) -> None:
    env = make_env(tmp_path, stage="staged")
    env.registry.rollback(NAME)  # back to: 1.0.0 active, nothing staged
    add_occupancy(env.registry, tmp_path / "next", "1.2.0")

    async def install() -> VersionInfo:
        return env.registry.info(NAME, "1.2.0")

    staged, state = await env.rollout.stage(NAME, install)
    assert (staged.version, state.candidate, state.stage) == ("1.2.0", "1.2.0", "staged")
    _, again = await env.rollout.stage(NAME, install)  # already the candidate: no new step
    assert again == state
    await env.rollout.start(NAME, "shadow", 0.0, automatic=False)
    env.rollout.status = ShadowStatus("1.2.0")  # A/B needs a healthy shadow verdict
    await env.rollout.start(NAME, "ab", 0.25, automatic=True, reason="due")
    state = await env.rollout.promote(NAME, automatic=False, reason="by hand")
    assert (state.active, state.previous, state.candidate) == ("1.2.0", ACTIVE, None)
    state = await env.rollout.rollback(NAME, automatic=False, reason="changed my mind")
    assert (state.active, state.previous) == (ACTIVE, None)
    operator, automatic = audit_pb.ACTOR_USER_OVERRIDE, audit_pb.ACTOR_AUTOMATIC
    assert steps(env) == [
        ("update.stage", "1.2.0", operator),
        ("update.shadow", "1.2.0", operator),
        ("update.ab", "1.2.0", automatic),
        ("update.promote", "1.2.0", operator),
        ("update.rollback", "1.2.0", operator),
    ]
    assert [d.policy.reason for d in env.audit.decisions][-3:] == [
        "due",
        "by hand; gate: healthy",  # an owner's promotion records the verdict
        "changed my mind",
    ]


async def test_a_refused_step_is_neither_audited_nor_applied(tmp_path: Path) -> None:
    env = make_env(tmp_path, stage="staged")
    before = env.registry.state(NAME)
    with pytest.raises(FailedPrecondition, match="is only staged"):
        await env.rollout.promote(NAME, automatic=False, reason="too early")
    assert env.audit.decisions == []
    assert env.registry.state(NAME) == before


@pytest.mark.parametrize(
    ("code", "deadline", "error"),
    [
        # A refusal is not retried, however long the deadline.
        (grpc.StatusCode.INVALID_ARGUMENT, 5.0, InvalidArgument),
        (grpc.StatusCode.PERMISSION_DENIED, 5.0, PermissionDenied),
        # An outage past the deadline.
        (grpc.StatusCode.UNAVAILABLE, 0.0, Unavailable),
    ],
)
async def test_a_step_the_audit_did_not_record_is_not_taken(
    tmp_path: Path, code: grpc.StatusCode, deadline: float, error: type[Exception]
) -> None:
    registry = registry_with_candidate(tmp_path)
    audit = FakeAudit([code])
    rollout = Rollout(
        registry,
        Trail(audit, "test", deadline),  # type: ignore[arg-type]
        status=FakeStatus(),
        health_policy=HealthPolicy(),
    )
    before = registry.state(NAME)
    with pytest.raises(error, match=r"the step update\.promote was not taken"):
        await rollout.promote(NAME, automatic=False, reason="by hand")
    assert audit.calls == 1
    # Promoted, not recorded, undone: the slots are back (a later generation).
    after = registry.state(NAME)
    assert after.generation > before.generation
    assert after == SlotState(**{**before.__dict__, "generation": after.generation})


async def test_steps_on_one_model_take_turns(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    results = await asyncio.gather(
        env.rollout.promote(NAME, automatic=False, reason="first"),
        env.rollout.promote(NAME, automatic=False, reason="second"),
        return_exceptions=True,
    )
    assert isinstance(results[0], SlotState)
    assert results[0].active == CANDIDATE
    assert isinstance(results[1], FailedPrecondition)
    assert [d.action for d in env.audit.decisions] == ["update.promote"]


# --------------------------------------------------------------------------- outcomes


async def test_a_candidate_much_worse_on_the_labels_is_rolled_back(tmp_path: Path) -> None:
    env = make_env(tmp_path, FakeFeedback({ACTIVE: (0.95, 40), CANDIDATE: (0.40, 40)}))
    started = env.registry.state(NAME).stage_started_at
    ((name, verdict),) = await env.rollout.check_health()
    assert name == NAME
    assert verdict.healthy is False
    assert "feedback accuracy 40.0% vs active 95.0%" in verdict.summary()
    # Asked for both versions, on the labels observed since the A/B stage started.
    assert env.feedback.calls == [(NAME, (ACTIVE, CANDIDATE), datetime.fromisoformat(started))]
    state = env.registry.state(NAME)
    assert (state.active, state.candidate, state.stage) == (ACTIVE, None, "none")
    (step,) = env.audit.decisions
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
    env = make_env(tmp_path, FakeFeedback(scores))
    ((_, verdict),) = await env.rollout.check_health()
    assert verdict.healthy is True, verdict.summary()
    assert env.registry.state(NAME).candidate == CANDIDATE
    assert env.audit.decisions == []


async def test_without_personalization_the_gate_works_as_before(tmp_path: Path) -> None:
    env = make_env(tmp_path, None)
    ((_, verdict),) = await env.rollout.check_health()
    assert verdict.healthy is True


async def test_a_rollout_inference_has_not_loaded_is_not_judged(tmp_path: Path) -> None:
    env = make_env(tmp_path, FakeFeedback({ACTIVE: (0.95, 40), CANDIDATE: (0.40, 40)}))
    env.registry.rollback(NAME)
    add_occupancy(env.registry, tmp_path / "next", "1.2.0")
    env.registry.stage(NAME, "1.2.0")
    env.registry.start_rollout(NAME, "ab", 0.5)  # inference still reports 1.1.0
    assert await env.rollout.check_health() == []
    assert env.feedback.calls == []
    assert env.audit.decisions == []


async def test_a_healthy_candidate_advances_by_itself(tmp_path: Path) -> None:
    """shadow -> A/B -> active, each step once the stage has been healthy long enough."""
    env = make_env(
        tmp_path, FakeFeedback({ACTIVE: (0.9, 25), CANDIDATE: (0.9, 25)}), stage="shadow"
    )
    env.rollout.status = ShadowStatus()
    # Not due yet: nothing moves.
    env.rollout.schedule = RolloutSchedule(shadow_seconds=3600, ab_share=0.3, ab_seconds=3600)
    await env.rollout.check_health()
    assert env.registry.state(NAME).stage == "shadow"
    # Due: shadow -> A/B at the schedule's share, then A/B -> active.
    env.rollout.schedule = RolloutSchedule(shadow_seconds=0, ab_share=0.3, ab_seconds=0)
    await env.rollout.check_health()
    s = env.registry.state(NAME)
    assert (s.stage, s.share) == ("ab", pytest.approx(0.3))
    await env.rollout.check_health()
    s = env.registry.state(NAME)
    assert (s.active, s.candidate) == (CANDIDATE, None)
    assert [(d.action, d.actor) for d in env.audit.decisions] == [
        ("update.ab", audit_pb.ACTOR_AUTOMATIC),
        ("update.promote", audit_pb.ACTOR_AUTOMATIC),
    ]
    assert "healthy for" in env.audit.decisions[-1].policy.reason


async def test_without_the_schedule_a_healthy_candidate_waits(tmp_path: Path) -> None:
    env = make_env(
        tmp_path, schedule=RolloutSchedule(enabled=False, shadow_seconds=0, ab_seconds=0)
    )
    await env.rollout.check_health()
    assert env.registry.state(NAME).stage == "ab"
    assert env.audit.decisions == []


# --------------------------------------------------------------------------- the gate's rules


@pytest.mark.parametrize(
    ("stage", "verdict", "match"),
    [
        ("staged", Verdict(True, ("fine",)), "is staged; run it in shadow first"),
        ("shadow", None, "has no shadow verdict yet"),
        ("shadow", Verdict(None, ("3 of 100 rows compared",)), "it is undecided: 3 of 100"),
        ("shadow", Verdict(False, ("errors 100%",)), "it is unhealthy: errors 100%"),
    ],
)
def test_ab_needs_a_healthy_shadow_verdict_first(
    stage: str, verdict: Verdict | None, match: str
) -> None:
    with pytest.raises(FailedPrecondition, match=match):
        ab_entry_check(NAME, slots(stage, CANDIDATE), verdict)
    ab_entry_check(NAME, slots("shadow", CANDIDATE), Verdict(True, ("fine",)))
    ab_entry_check(NAME, slots("ab", CANDIDATE, share=0.2), None)  # a new share


async def test_staged_straight_to_ab_is_refused_and_not_audited(tmp_path: Path) -> None:
    env = make_env(tmp_path, stage="staged")
    with pytest.raises(FailedPrecondition, match="run it in shadow first"):
        await env.rollout.start(NAME, "ab", 0.25, automatic=False)
    assert env.registry.state(NAME).stage == "staged"
    assert env.audit.decisions == []


class NotLoaded(FakeStatus):
    """Inference applied ``generation`` but could not load the candidate."""

    def __init__(self, generation: int) -> None:
        self.generation = generation

    async def health(self, name: str) -> tuple[RoleHealth | None, RoleHealth | None]:
        return (
            RoleHealth(ACTIVE, 1000, 0, 0.001, latency_calls=1000),
            RoleHealth(CANDIDATE, 0, 0, 0.0, loaded=False, generation=self.generation),
        )


async def test_a_candidate_inference_cannot_load_is_rolled_back(tmp_path: Path) -> None:
    env = make_env(tmp_path, stage="shadow")
    generation = env.registry.state(NAME).generation
    env.rollout.status = NotLoaded(generation - 1)  # not tried yet: no verdict
    assert await env.rollout.check_health() == []
    env.rollout.status = NotLoaded(generation)
    ((_, verdict),) = await env.rollout.check_health()
    assert verdict.summary() == f"unhealthy: candidate {CANDIDATE} failed to load in inference"
    assert env.registry.state(NAME).candidate is None
    assert [d.action for d in env.audit.decisions] == ["update.rollback"]


class StillShadow(FakeStatus):
    """Inference still serves the shadow ``generation``: its candidate stats are shadow
    rows (coalesced batches, slower than live calls), not A/B ones."""

    def __init__(self, generation: int) -> None:
        self.generation = generation

    async def health(self, name: str) -> tuple[RoleHealth | None, RoleHealth | None]:
        return (
            RoleHealth(ACTIVE, 1000, 0, 0.0006, latency_calls=1000),
            RoleHealth(
                CANDIDATE,
                500,
                0,
                0.0023,
                compared=500,
                generation=self.generation,
                latency_calls=500,
            ),
        )


async def test_ab_is_not_judged_on_the_shadow_rows_inference_still_reports(
    tmp_path: Path,
) -> None:
    """The race a loaded machine shows: A/B written, inference not yet applied it. The
    shadow window's rows and p99 must not be judged by A/B's rules (p99 3.8x → rollback)."""
    env = make_env(tmp_path, stage="ab")
    env.rollout.policy = HealthPolicy(min_compared=100, latency_floor_seconds=0.0005)
    generation = env.registry.state(NAME).generation
    env.rollout.status = StillShadow(generation - 1)
    assert await env.rollout.check_health() == []
    assert env.registry.state(NAME).candidate == CANDIDATE
    assert env.audit.decisions == []
    env.rollout.status = StillShadow(generation)  # applied: now it is A/B's own rows
    ((_, verdict),) = await env.rollout.check_health()
    assert verdict.healthy is False
    assert "p99 latency 2.30 ms vs active 0.60 ms" in verdict.summary()


# --------------------------------------------------------------------------- honest trail


async def test_a_promotion_that_fails_is_never_in_the_audit_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = make_env(tmp_path)
    before = env.registry.state(NAME)

    def disk_full(name: str) -> SlotState:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(env.registry, "promote", disk_full)
    with pytest.raises(OSError, match="No space left"):
        await env.rollout.promote(NAME, automatic=False, reason="by hand")
    assert env.audit.decisions == []  # recorded after the flip, and there was none
    assert env.registry.state(NAME) == before


async def test_a_recorded_step_that_fails_gets_a_compensating_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = make_env(tmp_path, stage="staged")
    before = env.registry.state(NAME)

    def disk_full(name: str, stage: str, share: float = 0.0) -> SlotState:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(env.registry, "start_rollout", disk_full)
    with pytest.raises(OSError, match="No space left"):
        await env.rollout.start(NAME, "shadow", 0.0, automatic=False)
    assert [(d.action, d.model.version) for d in env.audit.decisions] == [
        ("update.shadow", CANDIDATE),
        ("update.failed", CANDIDATE),
    ]
    failed = env.audit.decisions[1]
    assert failed.output_label == f"update.shadow of {CANDIDATE} did not take effect"
    assert failed.policy.reason == "OSError: [Errno 28] No space left on device"
    assert env.registry.state(NAME) == before
