"""The homeowner's learning mode is binding in the service itself: ``local-only`` and
``paused`` refuse a fleet round before the ledger reserves anything, ``paused`` refuses a
training run, the mode survives a restart, a damaged file fails closed, and only the hub
may set it. tests/integration/test_learning_mode.py drives it from Home Assistant's
command topic through the real hub."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from roost.personalization.v1 import personalization_service_pb2 as pb
from services.kit.auth import Role, is_allowed, service_policy
from services.kit.errors import FailedPrecondition, InvalidArgument
from services.kit.tensors import array_to_tensor
from services.modelstore.registry import Registry
from services.personalization.config import PersonalizationConfig
from services.personalization.fleet_round import FleetRounds
from services.personalization.job_manager import JobManager
from services.personalization.job_table import JobTable
from services.personalization.learning_mode import FILE_NAME, LearningMode
from services.personalization.ledger import PrivacyLedger
from services.personalization.servicer import POLICY, PersonalizationServicer
from services.personalization.store import ExampleStore
from tests.support.occupancy_rows import synthetic_occupancy

SET = "/roost.personalization.v1.PersonalizationService/SetLearningMode"
HEAD_SIZE = 66  # occupancy: Linear(32, 2)


@pytest.fixture
def servicer(
    config: PersonalizationConfig,
    registry: Registry,
    manager: JobManager,
    store: ExampleStore,
    ledger: PrivacyLedger,
    job_table: JobTable,
    learning_mode: LearningMode,
) -> PersonalizationServicer:
    async def decisions(decision_id: str) -> object:
        raise AssertionError("no decisions here")

    fleet_config = PersonalizationConfig(data_dir=config.data_dir, min_examples=50)
    return PersonalizationServicer(
        manager=manager,
        store=store,
        ledger=ledger,
        job_table=job_table,
        decisions=decisions,  # type: ignore[arg-type]
        max_examples_per_request=1000,
        learning_mode=learning_mode,
        fleet=FleetRounds(
            fleet_config, manager=manager, store=store, ledger=ledger, registry=registry
        ),
    )


def round_request(round_id: str) -> pb.ComputeFederatedUpdateRequest:
    return pb.ComputeFederatedUpdateRequest(
        model_name="occupancy",
        round_id=round_id,
        clip_norm=1.0,
        noise_multiplier=2.0,
        min_participants=4,
        global_parameters=np.zeros(HEAD_SIZE, "<f4").tobytes(),
    )


async def add_examples(servicer: PersonalizationServicer, n: int = 120) -> None:
    x, labels = synthetic_occupancy(n, seed=5)
    request = pb.AddExamplesRequest(
        model_name="occupancy",
        source=pb.LABEL_SOURCE_SENSOR,
        examples=[
            pb.Example(input=array_to_tensor(r), label=lab)
            for r, lab in zip(x, labels, strict=True)
        ],
    )
    assert (await servicer.AddExamples(request, None)).added == n


async def set_mode(servicer: PersonalizationServicer, mode: pb.LearningMode.ValueType) -> None:
    resp = await servicer.SetLearningMode(pb.SetLearningModeRequest(mode=mode), None)
    assert resp.mode == mode


@pytest.mark.parametrize(
    ("mode", "name"),
    [(pb.LEARNING_MODE_LOCAL_ONLY, "local-only"), (pb.LEARNING_MODE_PAUSED, "paused")],
)
async def test_a_fleet_round_is_refused_before_anything_is_reserved(
    servicer: PersonalizationServicer,
    ledger: PrivacyLedger,
    mode: pb.LearningMode.ValueType,
    name: str,
) -> None:
    await add_examples(servicer)  # enough for a round: only the mode can refuse it
    await set_mode(servicer, mode)
    with pytest.raises(FailedPrecondition) as refused:
        await servicer.ComputeFederatedUpdate(round_request("r1"), None)
    assert str(refused.value) == (
        f"the homeowner set learning to {name}: no fleet rounds (set in Home Assistant)"
    )
    assert ledger.history("household") == []
    assert ledger.report("household").epsilon_spent == 0.0

    # Back to learning: the same round is computed and charged once.
    await set_mode(servicer, pb.LEARNING_MODE_LEARNING)
    res = await servicer.ComputeFederatedUpdate(round_request("r1"), None)
    assert len(np.frombuffer(res.noised_delta, "<f4")) == HEAD_SIZE
    assert len(ledger.history("household")) == 1


async def test_paused_refuses_a_training_run_and_local_only_does_not(
    servicer: PersonalizationServicer, ledger: PrivacyLedger, job_table: JobTable
) -> None:
    await set_mode(servicer, pb.LEARNING_MODE_PAUSED)
    with pytest.raises(FailedPrecondition, match="set learning to paused: no training runs"):
        await servicer.StartTraining(
            pb.StartTrainingRequest(model_name="occupancy", target_epsilon=1.0), None
        )
    assert ledger.history("household") == []
    assert job_table.page(0, 10) == ([], False)
    # local-only keeps training on the hub: the run gets past the mode (and is refused
    # for what the store lacks, not for the mode).
    await set_mode(servicer, pb.LEARNING_MODE_LOCAL_ONLY)
    with pytest.raises(FailedPrecondition) as refused:
        await servicer.StartTraining(
            pb.StartTrainingRequest(model_name="occupancy", target_epsilon=1.0), None
        )
    assert "homeowner" not in str(refused.value)
    assert "examples" in str(refused.value)


async def test_an_unspecified_mode_is_refused_and_changes_nothing(
    servicer: PersonalizationServicer, learning_mode: LearningMode
) -> None:
    await set_mode(servicer, pb.LEARNING_MODE_LOCAL_ONLY)
    for bad in (pb.LEARNING_MODE_UNSPECIFIED, 99):
        with pytest.raises(InvalidArgument, match="mode: required"):
            await servicer.SetLearningMode(
                pb.SetLearningModeRequest(mode=bad),  # type: ignore[arg-type]
                None,
            )
    assert learning_mode.mode == "local-only"


def test_the_mode_persists_across_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "data" / FILE_NAME
    # Never set: today's behaviour (rounds iff [fleet] enabled runs a SuperNode).
    assert LearningMode(path).mode == "learning"
    first = LearningMode(path)
    assert first.set("local-only") is True
    assert first.set("local-only") is False
    restarted = LearningMode(path)
    assert restarted.mode == "local-only"
    with pytest.raises(FailedPrecondition):
        restarted.check_fleet_round()
    restarted.check_training()  # local-only trains on the hub
    assert not list(path.parent.glob("*.tmp"))


@pytest.mark.parametrize(
    "content", [b"", b"{not json", b'{"mode": "everything"}', b'["learning"]', b"\xff\xfe"]
)
def test_a_damaged_file_fails_closed_until_the_hub_sets_the_mode(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / FILE_NAME
    path.write_bytes(content)
    mode = LearningMode(path)
    assert mode.mode == "paused"
    with pytest.raises(FailedPrecondition):
        mode.check_fleet_round()
    with pytest.raises(FailedPrecondition):
        mode.check_training()
    # The hub sending "paused" again rewrites the damaged file.
    mode.set("paused")
    assert LearningMode(path).mode == "paused"
    mode.set("learning")
    assert LearningMode(path).mode == "learning"


def test_an_unreadable_file_fails_closed(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    path.mkdir()  # reading it raises IsADirectoryError (an OSError)
    assert LearningMode(path).mode == "paused"


def test_only_the_hub_may_set_the_mode() -> None:
    policy = service_policy(pb.DESCRIPTOR.services_by_name["PersonalizationService"], POLICY)
    assert policy[SET] == frozenset({Role.HUB})
    for role in Role:
        assert is_allowed(policy, SET, role) is (role == Role.HUB)
    assert is_allowed(policy, SET, None) is False
