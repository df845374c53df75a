"""ComputeFederatedUpdate on real processes (audit + personalization of one hub).

The hub half of fleet learning: the round is reserved in the ledger (and so in the audit
log) before anything is computed, only a delta clipped to C plus the hub's noise share
comes back, a retried round is not charged twice, and a hub without budget is refused
(it sits the round out) with nothing charged.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from cli.stack import Stack
from models.datasets import DatasetMissing, load_occupancy
from models.occupancy.data import build_features
from roost.audit.v1 import audit_service_pb2 as audit_pb
from roost.audit.v1 import audit_service_pb2_grpc as audit_grpc
from roost.personalization.v1 import personalization_service_pb2 as pb
from roost.personalization.v1 import personalization_service_pb2_grpc as pb_grpc
from services.kit.auth import Role
from services.kit.tensors import array_to_tensor
from services.personalization.federated_train import HEADS
from tests.support.shared_data import DATA_DIR
from tests.support.stacks import service_channel

pytestmark = pytest.mark.integration

HEAD_SIZE = 66  # occupancy: Linear(32, 2)
CLIP, SIGMA, T = 1.0, 2.0, 4


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    st = Stack(tmp_path_factory.mktemp("fleet-update") / "home", hub_id="fleet1")
    try:
        st.bootstrap_models()
        st.start_service(Role.AUDIT)
        st.start_service(
            Role.PERSONALIZATION,
            {"ROOST_PERSONALIZATION_MIN_EXAMPLES": "50", "ROOST_PERSONALIZATION_EPOCHS": "1"},
            timeout=60,
        )
        yield st
    finally:
        st.stop()


def examples(n: int = 400) -> tuple[np.ndarray, list[str]]:
    try:
        train = load_occupancy("train", DATA_DIR)
    except DatasetMissing as e:
        pytest.skip(f"{e}")
    x = build_features(train)[:n].astype(np.float32)
    return x, ["occupied" if v else "vacant" for v in train.occupancy[:n]]


def request(round_id: str, head: np.ndarray) -> pb.ComputeFederatedUpdateRequest:
    return pb.ComputeFederatedUpdateRequest(
        model_name="occupancy",
        round_id=round_id,
        clip_norm=CLIP,
        noise_multiplier=SIGMA,
        min_participants=T,
        global_parameters=np.asarray(head, "<f4").tobytes(),
    )


async def test_a_round_is_charged_first_and_returns_only_a_clipped_noised_delta(
    stack: Stack,
) -> None:
    assert "occupancy" in HEADS
    hub = pb_grpc.PersonalizationServiceStub(service_channel(stack, Role.PERSONALIZATION, Role.HUB))
    head = np.zeros(HEAD_SIZE, np.float32)
    # No examples yet: refused, nothing charged.
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await hub.ComputeFederatedUpdate(request("r0", head), timeout=60)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    x, labels = examples()
    await hub.AddExamples(
        pb.AddExamplesRequest(
            model_name="occupancy",
            source=pb.LABEL_SOURCE_SENSOR,
            examples=[
                pb.Example(input=array_to_tensor(r), label=lab)
                for r, lab in zip(x, labels, strict=True)
            ],
        ),
        timeout=30,
    )
    ledger = await hub.ListLedgerEntries(pb.ListLedgerEntriesRequest(), timeout=10)
    assert len(ledger.entries) == 0

    res = await hub.ComputeFederatedUpdate(request("r1", head), timeout=120)
    delta = np.frombuffer(res.noised_delta, "<f4")
    assert delta.size == HEAD_SIZE
    # Clipped to C plus noise of std sigma*C/sqrt(t) = 1 per coordinate: the norm is
    # about sqrt(66) ~ 8; an unclipped, un-noised delta would not look like this.
    assert 4.0 < float(np.linalg.norm(delta)) < 14.0
    assert res.round_epsilon > 0
    assert res.epsilon_spent >= res.round_epsilon - 1e-9
    assert res.model_version

    entries = (await hub.ListLedgerEntries(pb.ListLedgerEntriesRequest(), timeout=10)).entries
    assert len(entries) == 1
    assert entries[0].noise_multiplier == SIGMA
    assert entries[0].steps == 1
    # A retried round is the same reservation: charged once.
    again = await hub.ComputeFederatedUpdate(request("r1", head), timeout=120)
    assert again.reservation_id == res.reservation_id
    assert (
        len((await hub.ListLedgerEntries(pb.ListLedgerEntriesRequest(), timeout=10)).entries) == 1
    )

    # The reservation is in the hub's audit log (privacy.reserve), before anything left.
    audit = audit_grpc.AuditServiceStub(service_channel(stack, Role.AUDIT, Role.AUDITOR))
    found = await audit.QueryDecisions(
        audit_pb.QueryDecisionsRequest(action="privacy.reserve", page_size=50), timeout=10
    )
    assert any("fleet-r1" in d.decision.output_label for d in found.entries), found

    # Spend the rest of the budget: the hub then sits rounds out, nothing more charged.
    codes = []
    for i in range(2, 40):
        try:
            await hub.ComputeFederatedUpdate(request(f"r{i}", head), timeout=120)
        except grpc.aio.AioRpcError as err:
            codes.append(err.code())
            break
    assert codes == [grpc.StatusCode.FAILED_PRECONDITION]
    n = len((await hub.ListLedgerEntries(pb.ListLedgerEntriesRequest(), timeout=10)).entries)
    budget = (await hub.GetPrivacyBudget(pb.GetPrivacyBudgetRequest(), timeout=10)).budget
    assert n == i - 1
    assert budget.epsilon_spent <= budget.epsilon_limit
