"""A model update end to end on real processes: a signed TUF repository, the update
service, inference serving from the registry, the audit log.

stage (TUF-verified) -> shadow -> A/B -> promote -> rollback, under continuous
Predict load with zero failed calls; rollback serves the old version again; a
bad candidate is rolled back by the health gate on its own; every step is audited.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from cli.main import main
from cli.stack import Stack
from cli.tuf_repo import ModelRepository
from roost.audit.v1 import audit_service_pb2 as audit_pb
from roost.audit.v1 import audit_service_pb2_grpc as audit_grpc
from roost.common.v1 import common_pb2
from roost.inference.v1 import inference_service_pb2 as inf_pb
from roost.inference.v1 import inference_service_pb2_grpc as inf_grpc
from roost.update.v1 import update_service_pb2 as pb
from roost.update.v1 import update_service_pb2_grpc as pb_grpc
from services.kit.auth import Role
from services.kit.certs import LOCAL_CANDIDATE_KEY
from services.modelstore import local_key
from services.modelstore.bundle import pack_bundle
from tests.support.model_versions import OCCUPIED, occupancy_version
from tests.support.stacks import service_channel
from tests.support.waiting import wait_for_async

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("rollout")
    repo = ModelRepository.create(tmp / "repo", tmp / "keys")
    for version, bad in (("1.1.0", False), ("1.2.0", True)):
        src = occupancy_version(tmp, version, constant_vacant=bad)
        repo.publish("occupancy", pack_bundle(src, tmp / f"b-{version}.tar").path, version)
    trusted = tmp / "trusted-root.json"
    shutil.copy(repo.root_path, trusted)
    st = Stack(tmp / "home", hub_id="rollout")
    try:
        st.start_service(Role.AUDIT)
        st.start_service(Role.INFERENCE)
        st.start_service(
            Role.UPDATE,
            {
                "ROOST_UPDATE_TUF_SOURCE": str(tmp / "repo"),
                "ROOST_UPDATE_TUF_TRUSTED_ROOT": str(trusted),
                "ROOST_UPDATE_HEALTH_CHECK_SECONDS": "0.3",
                "ROOST_UPDATE_MIN_COMPARED": "30",
            },
        )
        yield st
    finally:
        st.stop()


def predict_request(entity: str = "occupancy.kitchen") -> inf_pb.PredictRequest:
    tensor = common_pb2.Tensor(dtype=common_pb2.DATA_TYPE_FLOAT32, shape=[6], float_values=OCCUPIED)
    return inf_pb.PredictRequest(model_name="occupancy", input=tensor, entity_id=entity)


class Load:
    """Continuous Predict calls as the hub would make them; counts failures."""

    def __init__(self, stub: inf_grpc.InferenceServiceAsyncStub) -> None:
        self.stub = stub
        # The entities the calls are for (A/B routes each to one version), in turn.
        self.entities: list[str] = ["occupancy.kitchen"]
        self.ok = 0
        self.failed: list[str] = []
        self.versions: list[tuple[float, str]] = []

    async def run(self, stop: asyncio.Event) -> None:
        turn = 0
        while not stop.is_set():
            entity = self.entities[turn % len(self.entities)]
            turn += 1
            try:
                resp = await self.stub.Predict(predict_request(entity), timeout=2)
                self.ok += 1
                self.versions.append((time.monotonic(), resp.prediction.model.version))
            except grpc.aio.AioRpcError as e:
                self.failed.append(f"{e.code().name}: {e.details()}")
            await asyncio.sleep(0.002)


@pytest.fixture
async def load(stack: Stack) -> AsyncIterator[Load]:
    ch = service_channel(stack, Role.INFERENCE, Role.HUB)
    load = Load(inf_grpc.InferenceServiceStub(ch))
    stop = asyncio.Event()
    tasks = [asyncio.create_task(load.run(stop)) for _ in range(3)]
    yield load
    stop.set()
    await asyncio.gather(*tasks)
    await ch.close()


async def test_the_whole_rollout_under_load(stack: Stack, load: Load) -> None:
    update = pb_grpc.UpdateServiceStub(service_channel(stack, Role.UPDATE, Role.ADMIN))
    inference = inf_grpc.InferenceServiceStub(service_channel(stack, Role.INFERENCE, Role.HUB))

    available = await update.CheckForUpdates(pb.CheckForUpdatesRequest(), timeout=30)
    assert [(u.model.name, u.model.version) for u in available.updates] == [("occupancy", "1.2.0")]

    staged = await update.Stage(
        pb.StageRequest(model_name="occupancy", version="1.1.0"), timeout=60
    )
    assert staged.staged.slot == pb.SLOT_CANDIDATE
    assert staged.staged.source == pb.SOURCE_TUF

    await update.StartRollout(
        pb.StartRolloutRequest(model_name="occupancy", stage=pb.ROLLOUT_STAGE_SHADOW), timeout=10
    )

    async def compared() -> bool:
        s = await update.GetRolloutStatus(
            pb.GetRolloutStatusRequest(model_name="occupancy"), timeout=5
        )
        return s.status.health.compared_predictions >= 30

    await wait_for_async(compared, 20, "shadow comparisons")
    status = (
        await update.GetRolloutStatus(pb.GetRolloutStatusRequest(model_name="occupancy"), timeout=5)
    ).status
    assert status.stage == pb.ROLLOUT_STAGE_SHADOW
    assert status.health.agreement == 1.0  # the same weights under a new version
    assert {v for _, v in load.versions} == {"1.0.0"}  # shadow never answers

    await update.StartRollout(
        pb.StartRolloutRequest(
            model_name="occupancy", stage=pb.ROLLOUT_STAGE_AB, candidate_share=0.5
        ),
        timeout=10,
    )

    async def split() -> bool:
        batch = inf_pb.PredictBatchRequest(
            model_name="occupancy",
            inputs=[predict_request().input] * 200,
            entity_ids=[f"occupancy.room{i}" for i in range(200)],
        )
        resp = await inference.PredictBatch(batch, timeout=5)
        served = [p.model.version for p in resp.predictions]
        return 60 <= served.count("1.1.0") <= 140 and served.count("1.0.0") > 0

    await wait_for_async(split, 5, "A/B split of 200 entities near 50%")
    # Live calls for both versions, as a hub's rooms would make: the gate judges the
    # candidate's p99 latency over many calls, not over the few 200-row probes above
    # (one scheduling stall in those failed the gate on a loaded CI machine).
    load.entities = [f"occupancy.room{i}" for i in range(20)]
    candidate_calls = sum(1 for _, v in load.versions if v == "1.1.0")

    async def candidate_served() -> bool:
        return sum(1 for _, v in load.versions if v == "1.1.0") >= candidate_calls + 100

    await wait_for_async(candidate_served, 10, "100 live calls answered by the candidate")

    await update.Promote(pb.PromoteRequest(model_name="occupancy"), timeout=10)

    async def serving(version: str) -> bool:
        # Every one of the last 40 answers (two turns over the 20 rooms): under A/B a
        # single answer of a version proves nothing (CI once moved on while inference
        # still served the A/B split; the next test then saw 1.1.0).
        recent = load.versions[-40:]
        return len(recent) == 40 and all(v == version for _, v in recent)

    await wait_for_async(lambda: serving("1.1.0"), 5, "1.1.0 active")

    rolled = await update.Rollback(
        pb.RollbackRequest(model_name="occupancy", reason="integration test"), timeout=10
    )
    assert rolled.active.model.version == "1.0.0"
    # How fast it gets there is measured by `make bench` (bench/update.py).
    await wait_for_async(lambda: serving("1.0.0"), 5, "1.0.0 active again")
    served = load.ok

    async def more_served() -> bool:
        return load.ok >= served + 30

    await wait_for_async(more_served, 10, "30 more predictions after the rollback")
    assert load.failed == []
    assert load.ok > 100

    steps = await audited_steps(stack)
    assert [a for a, _ in steps][-5:] == [
        "update.stage",
        "update.shadow",
        "update.ab",
        "update.promote",
        "update.rollback",
    ]
    assert steps[-1][1] == "integration test"


async def audited_steps(stack: Stack) -> list[tuple[str, str]]:
    audit = audit_grpc.AuditServiceStub(service_channel(stack, Role.AUDIT, Role.AUDITOR))
    resp = await audit.QueryDecisions(
        audit_pb.QueryDecisionsRequest(entity_id="roost.model.occupancy", page_size=100),
        timeout=5,
    )
    return [(e.decision.action, e.decision.policy.reason) for e in resp.entries]


async def test_a_bad_candidate_is_rolled_back_by_the_health_gate(stack: Stack, load: Load) -> None:
    update = pb_grpc.UpdateServiceStub(service_channel(stack, Role.UPDATE, Role.ADMIN))
    await update.Stage(pb.StageRequest(model_name="occupancy", version="1.2.0"), timeout=60)
    await update.StartRollout(
        pb.StartRolloutRequest(model_name="occupancy", stage=pb.ROLLOUT_STAGE_SHADOW), timeout=10
    )

    async def withdrawn() -> bool:
        s = await update.GetRolloutStatus(
            pb.GetRolloutStatusRequest(model_name="occupancy"), timeout=5
        )
        return not s.status.candidate.version

    await wait_for_async(withdrawn, 30, "the health gate to roll back 1.2.0")
    action, reason = (await audited_steps(stack))[-1]
    assert action == "update.rollback"
    assert "agrees with active" in reason
    assert load.failed == []
    assert {v for _, v in load.versions} == {"1.0.0"}


async def test_refusals_are_precise(stack: Stack) -> None:
    update = pb_grpc.UpdateServiceStub(service_channel(stack, Role.UPDATE, Role.ADMIN))
    cases = [
        (pb.StageRequest(model_name="occupancy", version="9.9.9"), grpc.StatusCode.NOT_FOUND),
        (
            pb.StageRequest(model_name="occupancy", version="1.0.0"),
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
        (pb.StageRequest(model_name="nope", version="1.0.0"), grpc.StatusCode.NOT_FOUND),
        (pb.StageRequest(model_name="occupancy"), grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for request, code in cases:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await update.Stage(request, timeout=30)
        assert e.value.code() == code, (request, e.value.details())
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await update.Promote(pb.PromoteRequest(model_name="occupancy"), timeout=5)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    auditor = pb_grpc.UpdateServiceStub(service_channel(stack, Role.UPDATE, Role.AUDITOR))
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await auditor.Rollback(pb.RollbackRequest(model_name="occupancy"), timeout=5)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_local_candidates_need_the_hub_key_and_take_the_same_path(
    stack: Stack, tmp_path: Path
) -> None:
    src = occupancy_version(tmp_path, "1.0.0.1")
    bundle = pack_bundle(src, tmp_path / "local.tar").path.read_bytes()
    key = local_key.load_private(stack.certs_dir / LOCAL_CANDIDATE_KEY)
    good = local_key.sign(key, "occupancy", "1.0.0.1", bundle)
    personalization = pb_grpc.UpdateServiceStub(
        service_channel(stack, Role.UPDATE, Role.PERSONALIZATION)
    )
    forged = bytes(64)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await personalization.Stage(
            pb.StageRequest(model_name="occupancy", local_bundle=bundle, local_signature=forged),
            timeout=30,
        )
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "does not verify" in (e.value.details() or "")
    hub = pb_grpc.UpdateServiceStub(service_channel(stack, Role.UPDATE, Role.HUB))
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await hub.Stage(
            pb.StageRequest(model_name="occupancy", local_bundle=bundle, local_signature=good),
            timeout=30,
        )
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await personalization.Stage(
            pb.StageRequest(model_name="occupancy", version="1.1.0"), timeout=30
        )
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED

    staged = await personalization.Stage(
        pb.StageRequest(model_name="occupancy", local_bundle=bundle, local_signature=good),
        timeout=30,
    )
    assert (staged.staged.model.version, staged.staged.source) == ("1.0.0.1", pb.SOURCE_LOCAL)
    # Never straight to active: promotion needs shadow or A/B first.
    update = pb_grpc.UpdateServiceStub(service_channel(stack, Role.UPDATE, Role.ADMIN))
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await update.Promote(pb.PromoteRequest(model_name="occupancy"), timeout=5)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    await update.Rollback(pb.RollbackRequest(model_name="occupancy", reason="cleanup"), timeout=5)


def test_the_models_cli(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    stack.write_stack_file()
    home = ["--home", str(stack.home)]
    assert main([*home, "models", "status", "occupancy"]) == 0
    assert "occupancy  active 1.0.0" in capsys.readouterr().out
    assert main([*home, "models", "history", "occupancy"]) == 0
    out = capsys.readouterr().out
    assert "update.promote" in out
    assert "health gate" in out
    assert main([*home, "models", "promote", "occupancy"]) == 2
    assert "FAILED_PRECONDITION" in capsys.readouterr().err
