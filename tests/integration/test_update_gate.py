"""The health gate against validly signed bad models under live traffic, on real
processes (audit, inference, update over mTLS) and a real TUF repository.

Each bad version (``bench/bad_models.py``) ends refused at stage (nothing written) or
rolled back by the gate, with 0 failed Predict calls, no NaN served and only the active
version answering. The scenarios themselves are ``bench/update_gate.py`` (which
``make bench`` times).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from bench.update_gate import (
    GOOD,
    LOAD_ENTITIES,
    SCENARIOS,
    Gate,
    Load,
    Outcome,
    gate_env,
    gate_stack,
    run_scenario,
    running_load,
)
from cli.stack import Stack
from roost.update.v1 import update_service_pb2 as pb
from services.inference.registry import ab_position
from tests.support.waiting import poll_async

pytestmark = pytest.mark.integration

BY_KIND = {s.name: s for s in SCENARIOS}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with gate_stack(tmp_path_factory.mktemp("gate"), gate_env(30, 0.2)) as st:
        yield st


@pytest.fixture
async def load(stack: Stack) -> AsyncIterator[Load]:
    async with running_load(stack) as load:
        yield load
    # What callers saw while the bad version was around: nothing of it.
    assert load.failed == []
    assert load.non_finite == 0
    assert load.versions == {"1.0.0"}
    assert load.ok > 0


def nothing_written(stack: Stack, version: str) -> None:
    root = stack.models_dir
    assert not (root / "occupancy" / "versions" / version).exists()
    leftovers = [p.name for p in root.rglob("*") if p.name.startswith((".stage-", "."))]
    assert [p for p in leftovers if version in p or p.startswith(".stage-")] == []


async def scenario(stack: Stack, name: str) -> Outcome:
    gate = Gate(stack)
    outcome = await run_scenario(gate, BY_KIND[name], within=60)
    assert not (await gate.status()).candidate.version
    return outcome


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("wrong input schema", "input 'features' has shape ['batch', 7], the manifest says"),
        ("fails to load", "it cannot be loaded (InvalidProtobuf"),
        ("label-inverted, canary shipped", "canary: 0 of 2 rows as expected (minimum 100%)"),
    ],
)
async def test_refused_at_stage_with_the_reason_and_nothing_written(
    stack: Stack, load: Load, name: str, reason: str
) -> None:
    outcome = await scenario(stack, name)
    assert outcome.ended == "refused at stage"
    assert reason in outcome.reason
    nothing_written(stack, BY_KIND[name].version)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("NaN outputs", "non-finite)"),
        ("25x slower", "x the active's time on the same batches"),
        ("label-inverted", "agrees with active on 0.0%"),
    ],
)
async def test_rolled_back_by_the_gate_in_shadow(
    stack: Stack, load: Load, name: str, reason: str
) -> None:
    outcome = await scenario(stack, name)
    assert outcome.ended == "rolled back"
    assert outcome.reason.startswith("health gate: ")
    assert reason in outcome.reason


async def test_ab_only_is_refused_until_shadow_then_rolled_back(stack: Stack, load: Load) -> None:
    outcome = await scenario(stack, "A/B-only (label-inverted)")
    assert "run it in shadow first" in outcome.ab_refusal
    assert outcome.ended == "rolled back"
    assert "agrees with active on 0.0%" in outcome.reason


async def test_ab_judges_only_what_the_candidate_served_live(stack: Stack, load: Load) -> None:
    """A good candidate with a healthy shadow verdict enters A/B with a share that routes
    none of the load's entities: its shadow rows do not count, so it stays undecided."""
    gate = Gate(stack)
    await gate.update.Stage(pb.StageRequest(model_name="occupancy", version=GOOD), timeout=60)
    await gate.start(pb.ROLLOUT_STAGE_SHADOW)
    await poll_async(gate.status, lambda s: s.verdict.startswith("healthy: "), 30, "healthy")
    first = min(ab_position("occupancy", GOOD, e) for e in LOAD_ENTITIES)
    request = pb.StartRolloutRequest(
        model_name="occupancy", stage=pb.ROLLOUT_STAGE_AB, candidate_share=first / 2
    )
    await gate.update.StartRollout(request, timeout=10)

    def in_ab(s: pb.RolloutStatus) -> bool:
        # (until inference applies the A/B stage: "undecided: inference has not applied")
        return s.stage == pb.ROLLOUT_STAGE_AB and "served live" in s.verdict

    status = await poll_async(gate.status, in_ab, 10, "the A/B window")
    assert status.verdict == "undecided: 0 of 30 rows served live in A/B so far"
    assert status.health.candidate_predictions == 0
    await gate.update.Rollback(pb.RollbackRequest(model_name="occupancy"), timeout=10)
