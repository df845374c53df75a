"""The health gate's outcomes on real processes: audit, inference, personalization and
update with a signed TUF repository.

A bad occupancy candidate (it always answers "vacant") runs in shadow, then A/B, with
agreement and the output distribution not judged here (ROOST_UPDATE_MIN_AGREEMENT=0,
ROOST_UPDATE_MAX_OUTPUT_PSI=1000; ``test_update_gate.py`` shows those catching it):
error rate and latency alone cannot tell it is bad. Once the hub has stored enough ground-truth labels since the
stage started (a presence sensor saying "occupied"), personalization scores both
versions on them and the health gate rolls the candidate back for its feedback
accuracy, as the audit log records.
"""

from __future__ import annotations

import asyncio
import shutil
import urllib.request
from collections.abc import Iterator

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cli.stack import Stack
from cli.tuf_repo import ModelRepository
from roost.audit.v1 import audit_service_pb2 as audit_pb
from roost.audit.v1 import audit_service_pb2_grpc as audit_grpc
from roost.common.v1 import common_pb2
from roost.inference.v1 import inference_service_pb2 as inf_pb
from roost.inference.v1 import inference_service_pb2_grpc as inf_grpc
from roost.personalization.v1 import personalization_service_pb2 as pers_pb
from roost.personalization.v1 import personalization_service_pb2_grpc as pers_grpc
from roost.update.v1 import update_service_pb2 as pb
from roost.update.v1 import update_service_pb2_grpc as pb_grpc
from services.kit.auth import Role
from services.modelstore.bundle import pack_bundle
from tests.support.model_versions import OCCUPIED, occupancy_version
from tests.support.stacks import service_channel
from tests.support.waiting import wait_for_async

pytestmark = pytest.mark.integration

BAD = "1.2.0"
LABELS = 30  # >= min_feedback (20)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("feedback")
    repo = ModelRepository.create(tmp / "repo", tmp / "keys")
    src = occupancy_version(tmp, BAD, constant_vacant=True)
    repo.publish("occupancy", pack_bundle(src, tmp / "bad.tar").path, BAD)
    trusted = tmp / "trusted-root.json"
    shutil.copy(repo.root_path, trusted)
    st = Stack(tmp / "home", hub_id="feedback")
    try:
        st.start_service(Role.AUDIT)
        st.start_service(Role.INFERENCE)
        # Before update, so that update can be pointed at it.
        st.start_service(Role.PERSONALIZATION, timeout=60)
        st.start_service(
            Role.UPDATE,
            {
                "ROOST_UPDATE_TUF_SOURCE": str(tmp / "repo"),
                "ROOST_UPDATE_TUF_TRUSTED_ROOT": str(trusted),
                "ROOST_UPDATE_HEALTH_CHECK_SECONDS": "0.3",
                "ROOST_UPDATE_MIN_COMPARED": "20",
                "ROOST_UPDATE_MIN_AGREEMENT": "0",
                "ROOST_UPDATE_MAX_OUTPUT_PSI": "1000",
                "ROOST_UPDATE_FEEDBACK_CHECK_SECONDS": "0.5",
                "ROOST_UPDATE_PERSONALIZATION_TARGET": (
                    f"127.0.0.1:{st.port_of(Role.PERSONALIZATION)}"
                ),
            },
        )
        yield st
    finally:
        st.stop()


def occupied_row(i: int) -> common_pb2.Tensor:
    """A clearly occupied room (lights on, CO2 up), a little different each minute."""
    values = list(OCCUPIED)
    values[2] += i
    values[3] += 2 * i
    return common_pb2.Tensor(dtype=common_pb2.DATA_TYPE_FLOAT32, shape=[6], float_values=values)


def handled(stack: Stack, server: Role, method: str) -> float:
    """How many ``method`` calls ``server`` has answered (its gRPC metrics)."""
    port = stack.procs[server.value].info["metrics_port"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "roost_grpc_server_handled_total"
        and sample.labels.get("method") == method
    )


@pytest.mark.timeout(240)
async def test_a_candidate_wrong_on_the_homeowners_labels_is_rolled_back(stack: Stack) -> None:
    update = pb_grpc.UpdateServiceStub(service_channel(stack, Role.UPDATE, Role.ADMIN))
    inference = inf_grpc.InferenceServiceStub(service_channel(stack, Role.INFERENCE, Role.HUB))
    hub = pers_grpc.PersonalizationServiceStub(
        service_channel(stack, Role.PERSONALIZATION, Role.HUB)
    )
    auditor = pers_grpc.PersonalizationServiceStub(
        service_channel(stack, Role.PERSONALIZATION, Role.AUDITOR)
    )

    await update.Stage(pb.StageRequest(model_name="occupancy", version=BAD), timeout=60)
    # A/B only after a healthy shadow verdict on enough compared inputs.
    await update.StartRollout(
        pb.StartRolloutRequest(model_name="occupancy", stage=pb.ROLLOUT_STAGE_SHADOW), timeout=10
    )
    shadow = inf_pb.PredictBatchRequest(
        model_name="occupancy", inputs=[occupied_row(i) for i in range(40)]
    )

    async def shadow_healthy() -> bool:
        await inference.PredictBatch(shadow, timeout=10)
        s = await update.GetRolloutStatus(
            pb.GetRolloutStatusRequest(model_name="occupancy"), timeout=10
        )
        return s.status.verdict.startswith("healthy: ")

    await wait_for_async(shadow_healthy, 30, "a healthy shadow verdict", interval=0.3)
    await update.StartRollout(
        pb.StartRolloutRequest(
            model_name="occupancy", stage=pb.ROLLOUT_STAGE_AB, candidate_share=0.5
        ),
        timeout=10,
    )

    async def rollout_loaded() -> bool:
        s = await update.GetRolloutStatus(
            pb.GetRolloutStatusRequest(model_name="occupancy"), timeout=10
        )
        # A/B starts a fresh window: nothing served live yet once inference applied it.
        return s.status.verdict.startswith("undecided: 0 of")

    await wait_for_async(rollout_loaded, 20, "inference serving the A/B rollout")

    # A/B traffic: the candidate errs on nothing and is fast; only outcomes show it is bad.
    batch = inf_pb.PredictBatchRequest(
        model_name="occupancy",
        inputs=[occupied_row(i) for i in range(60)],
        entity_ids=[f"occupancy.room{i}" for i in range(60)],
    )
    served = await inference.PredictBatch(batch, timeout=10)
    assert BAD in {p.model.version for p in served.predictions}
    # Gate passes with this traffic, each scored by personalization: no labels yet.
    scored = await asyncio.to_thread(handled, stack, Role.PERSONALIZATION, "EvaluateVersions")

    async def judged() -> bool:
        now = await asyncio.to_thread(handled, stack, Role.PERSONALIZATION, "EvaluateVersions")
        return now >= scored + 2

    await wait_for_async(judged, 20, "two gate passes scored by personalization")
    status = (
        await update.GetRolloutStatus(
            pb.GetRolloutStatusRequest(model_name="occupancy"), timeout=10
        )
    ).status
    assert status.candidate.version == BAD, "rolled back before any label existed"

    # A presence sensor designated as ground truth labels the inputs: occupied.
    added = await hub.AddExamples(
        pers_pb.AddExamplesRequest(
            model_name="occupancy",
            source=pers_pb.LABEL_SOURCE_SENSOR,
            examples=[
                pers_pb.Example(input=occupied_row(i), label="occupied") for i in range(LABELS)
            ],
        ),
        timeout=30,
    )
    assert added.added == LABELS

    async def withdrawn() -> bool:
        s = await update.GetRolloutStatus(
            pb.GetRolloutStatusRequest(model_name="occupancy"), timeout=10
        )
        return not s.status.candidate.version

    await wait_for_async(withdrawn, 30, f"the health gate to roll back {BAD}")

    audit = audit_grpc.AuditServiceStub(service_channel(stack, Role.AUDIT, Role.AUDITOR))
    steps = await audit.QueryDecisions(
        audit_pb.QueryDecisionsRequest(entity_id="roost.model.occupancy", page_size=100),
        timeout=10,
    )
    last = steps.entries[-1].decision
    assert last.action == "update.rollback"
    assert last.actor == audit_pb.ACTOR_AUTOMATIC
    assert last.model.version == BAD
    assert "feedback accuracy 0.0% vs active 100.0%" in last.policy.reason, last.policy.reason

    # The same scores, as an auditor can read them (only counts and accuracies).
    scores = await auditor.EvaluateVersions(
        pers_pb.EvaluateVersionsRequest(model_name="occupancy", versions=["1.0.0"]), timeout=30
    )
    ((version, accuracy, count),) = [(r.version, r.accuracy, r.count) for r in scores.results]
    assert (version, accuracy, count) == ("1.0.0", 1.0, LABELS)
    # The hub stores labels but cannot score with them; the candidate is gone from inference.
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await hub.EvaluateVersions(
            pers_pb.EvaluateVersionsRequest(model_name="occupancy", versions=["1.0.0"]),
            timeout=10,
        )
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED

    refusals: list[tuple[grpc.StatusCode, str]] = []

    async def unloaded() -> bool:
        try:
            await auditor.EvaluateVersions(
                pers_pb.EvaluateVersionsRequest(model_name="occupancy", versions=[BAD]),
                timeout=30,
            )
        except grpc.aio.AioRpcError as e:
            refusals.append((e.code(), e.details() or ""))
            return True
        return False

    await wait_for_async(unloaded, 15, f"inference to unload {BAD}")
    ((code, details),) = refusals
    assert code == grpc.StatusCode.FAILED_PRECONDITION, details
    assert "does not serve" in details
