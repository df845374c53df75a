"""The inference servicer: A/B routes a stable share of entities to the candidate (a
mixed batch reassembled in order), model status is read-only for auditors over gRPC,
and ListModels pages with the kit's paginator."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import grpc
import numpy as np
import pytest

from roost.inference.v1 import inference_service_pb2 as pb
from roost.inference.v1 import inference_service_pb2_grpc as pb_grpc
from services.inference.registry import ModelRegistry, load_model
from services.inference.servicer import POLICY, SERVICE, InferenceServicer
from services.kit.auth import Role
from services.kit.certs import ensure_certs
from services.kit.client import aio_channel
from services.kit.errors import InvalidArgument
from services.kit.server import Registration, RoostServer
from tests.support.rollouts import (
    W_ACTIVE,
    W_CANDIDATE,
    StartApp,
    batch_request,
    config,
    linear_dir,
    linear_probs,
    tensor,
    two_linear_versions,
)


def expected_candidate(entity_id: str, share: float) -> bool:
    digest = hashlib.sha256(f"linear|2.0.0|{entity_id}".encode()).hexdigest()
    return int(digest[:8], 16) / 2**32 < share


async def test_ab_routes_a_stable_share_of_entities(tmp_path: Path, start_app: StartApp) -> None:
    share = 0.3
    two_linear_versions(tmp_path, "ab", share)
    app = await start_app(config(tmp_path))
    rng = np.random.default_rng(2)
    n = 2000
    x = rng.normal(size=(n, 3)).astype(np.float32)
    ids = [f"entity-{i}" for i in range(n)]
    response = await app.servicer.PredictBatch(batch_request(x, ids), None)
    assert response.model.version == "1.0.0"  # the response-level model stays active
    routed = np.array([p.model.version == "2.0.0" for p in response.predictions])
    # Binomial(2000, 0.3): mean 600, sd 20.5; 5 sd either side.
    sd = math.sqrt(n * share * (1 - share))
    assert abs(routed.sum() - n * share) <= 5 * sd
    assert routed.tolist() == [expected_candidate(e, share) for e in ids]
    # Mixed batch reassembled in order: each row's values come from its own model.
    got = np.array([p.values for p in response.predictions])
    want = np.where(routed[:, None], linear_probs(W_CANDIDATE, x), linear_probs(W_ACTIVE, x))
    assert np.allclose(got, want, atol=1e-5)
    for p in response.predictions:
        assert p.model.sha256
        assert p.label in ("no", "yes")

    # Stable per entity: another order, another batch split, single Predict.
    order = rng.permutation(n)[:300]
    again = await app.servicer.PredictBatch(batch_request(x[order], [ids[i] for i in order]), None)
    assert [p.model.version == "2.0.0" for p in again.predictions] == routed[order].tolist()
    for i in order[:20]:
        one = await app.servicer.Predict(
            pb.PredictRequest(model_name="linear", input=tensor(x[i]), entity_id=ids[i]), None
        )
        assert (one.prediction.model.version == "2.0.0") == routed[i]
        assert one.model.version == "1.0.0"
    # No entity id: always the active version.
    anonymous = await app.servicer.PredictBatch(batch_request(x[:100]), None)
    assert {p.model.version for p in anonymous.predictions} == {"1.0.0"}

    status = await app.servicer.GetModelStatus(pb.GetModelStatusRequest(model_name="linear"), None)
    assert (status.stage, status.share) == (pb.ROLLOUT_STAGE_AB, pytest.approx(share))
    k = int(routed.sum()) + int(routed[order].sum()) + int(routed[order[:20]].sum())
    assert status.candidate.predictions == k
    assert status.active.predictions == n + 300 + 20 + 100 - k


async def test_model_status_over_grpc_is_read_only_for_auditors(
    tmp_path: Path, start_app: StartApp
) -> None:
    ensure_certs(tmp_path / "certs")
    two_linear_versions(tmp_path, "staged")
    cfg = config(tmp_path)
    app = await start_app(cfg)
    server = RoostServer(
        cfg,
        Role.INFERENCE,
        [
            Registration.of(
                SERVICE, app.servicer, pb_grpc.add_InferenceServiceServicer_to_server, POLICY
            )
        ],
    )
    port = await server.start()
    try:
        for role, allowed in (
            (Role.AUDITOR, True),
            (Role.UPDATE, True),
            (Role.PERSONALIZATION, False),
        ):
            channel = aio_channel(
                f"127.0.0.1:{port}",
                certs_dir=tmp_path / "certs",
                role=role,
                server_role=Role.INFERENCE,
            )
            stub = pb_grpc.InferenceServiceStub(channel)
            try:
                if allowed:
                    s = await stub.GetModelStatus(
                        pb.GetModelStatusRequest(model_name="linear"), timeout=5
                    )
                    assert s.stage == pb.ROLLOUT_STAGE_STAGED
                    assert (s.candidate.model.version, s.candidate.loaded) == ("2.0.0", False)
                    assert not s.drift_monitored
                else:
                    with pytest.raises(grpc.aio.AioRpcError) as e:
                        await stub.GetModelStatus(
                            pb.GetModelStatusRequest(model_name="linear"), timeout=5
                        )
                    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
            finally:
                await channel.close()
    finally:
        await server.stop(0)


async def test_list_models_pages_with_opaque_tokens(tmp_path: Path) -> None:
    registry = ModelRegistry()
    for i, name in enumerate(["a", "b", "c"]):
        registry.put(load_model(linear_dir(tmp_path, W_ACTIVE, f"1.0.{i}", name=name)))
    servicer = InferenceServicer(registry, max_batch=8)
    names: list[str] = []
    tokens: list[str] = []
    request = pb.ListModelsRequest(page_size=2)
    while True:
        page = await servicer.ListModels(request, None)
        names += [m.model.name for m in page.models]
        if not page.next_page_token:
            break
        tokens.append(page.next_page_token)
        request = pb.ListModelsRequest(page_size=2, page_token=page.next_page_token)
    assert names == ["a", "b", "c"]
    assert len(tokens) == 1
    everything = await servicer.ListModels(pb.ListModelsRequest(), None)  # 0: the maximum
    assert [m.model.name for m in everything.models] == names
    assert not everything.next_page_token
    for size in (-1, 101):
        with pytest.raises(InvalidArgument, match="page_size: must be between 0 and 100"):
            await servicer.ListModels(pb.ListModelsRequest(page_size=size), None)
    with pytest.raises(InvalidArgument, match="page_token: invalid"):
        await servicer.ListModels(pb.ListModelsRequest(page_token=tokens[0] + "x"), None)
    registry.close()


async def test_a_100kb_name_is_refused_by_field_not_echoed(
    tmp_path: Path, start_app: StartApp
) -> None:
    """A 100 KB model name came back as RESOURCE_EXHAUSTED: the NOT_FOUND message echoed
    it and overflowed the status metadata. It is INVALID_ARGUMENT naming the field."""
    ensure_certs(tmp_path / "certs")
    two_linear_versions(tmp_path, "staged")
    cfg = config(tmp_path)
    app = await start_app(cfg)
    server = RoostServer(
        cfg,
        Role.INFERENCE,
        [
            Registration.of(
                SERVICE, app.servicer, pb_grpc.add_InferenceServiceServicer_to_server, POLICY
            )
        ],
    )
    port = await server.start()
    channel = aio_channel(
        f"127.0.0.1:{port}", certs_dir=tmp_path / "certs", role=Role.HUB, server_role=Role.INFERENCE
    )
    stub = pb_grpc.InferenceServiceStub(channel)
    name = "m" * 100_000
    x = np.zeros((1, 3), dtype=np.float32)
    calls = [
        (
            stub.Predict(pb.PredictRequest(model_name=name, input=tensor(x[0])), timeout=5),
            "model_name",
        ),
        (stub.PredictBatch(batch_request(x, model=name), timeout=5), "model_name"),
        (stub.GetModelStatus(pb.GetModelStatusRequest(model_name=name), timeout=5), "model_name"),
        (
            stub.Predict(
                pb.PredictRequest(model_name="linear", version=name, input=tensor(x[0])), timeout=5
            ),
            "version",
        ),
    ]
    try:
        for call, field in calls:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await call
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert e.value.details() == f"{field}: longer than 64 characters"
        # A name within the cap that is not loaded is still NOT_FOUND, named.
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.Predict(
                pb.PredictRequest(model_name="m" * 64, input=tensor(x[0])), timeout=5
            )
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        await channel.close()
        await server.stop(0)


async def test_list_models_names_the_execution_provider_a_fallback_included(
    tmp_path: Path,
) -> None:
    registry = ModelRegistry(providers=("NoSuchAcceleratorExecutionProvider",))
    registry.load_directory(linear_dir(tmp_path, W_ACTIVE, "1.0.0").parent)
    servicer = InferenceServicer(registry, max_batch=8)
    listed = await servicer.ListModels(pb.ListModelsRequest(), None)
    assert [m.execution_provider for m in listed.models] == ["CPUExecutionProvider"]
    registry.close()
