"""The service kit over real gRPC with mTLS, in-process: auth, error mapping, metrics,
health and reflection, graceful stop. The servicer under test is the inference one."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY

from roost.common.v1 import common_pb2
from roost.inference.v1 import inference_service_pb2 as pb
from roost.inference.v1 import inference_service_pb2_grpc as pb_grpc
from services.inference.registry import LoadedModel, ModelRegistry
from services.inference.servicer import POLICY, SERVICE, InferenceServicer
from services.kit.auth import PolicyError, Role
from services.kit.certs import ensure_certs
from services.kit.client import aio_channel
from services.kit.config import ServiceConfig
from services.kit.server import Registration, RoostServer
from services.kit.watchdog import LIVENESS
from tests.support.onnx_models import linear_model

NAME = "roost.inference.v1.InferenceService"


class ExplodingRegistry(ModelRegistry):
    async def run(self, model: LoadedModel, batch: Any) -> Any:
        raise RuntimeError("secret household value 4242")


async def start(tmp_path: Path, registry: ModelRegistry, **cfg: Any) -> RoostServer:
    certs = tmp_path / "certs"
    ensure_certs(certs)
    servicer = InferenceServicer(registry, max_batch=8)
    server = RoostServer(
        ServiceConfig(port=0, certs_dir=certs, **cfg),
        Role.INFERENCE,
        [
            Registration.of(
                SERVICE, servicer, pb_grpc.add_InferenceServiceServicer_to_server, POLICY
            )
        ],
    )
    await server.start()
    return server


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[RoostServer, Path]]:
    registry = ModelRegistry()
    registry.put(linear_model(tmp_path, [1.0, 0.0, -1.0]))
    server = await start(tmp_path, registry)
    yield server, tmp_path / "certs"
    await server.stop(0)
    registry.close()


def stub(server: RoostServer, certs: Path, role: Role) -> pb_grpc.InferenceServiceAsyncStub:
    channel = aio_channel(
        f"127.0.0.1:{server.port}", certs_dir=certs, role=role, server_role=Role.INFERENCE
    )
    return pb_grpc.InferenceServiceStub(channel)  # type: ignore[return-value]


def tensor(values: list[float]) -> common_pb2.Tensor:
    return common_pb2.Tensor(dtype=common_pb2.DATA_TYPE_FLOAT32, float_values=values)


async def eventually_handled(method: str, code: str, expected: float) -> None:
    """The server records a call just after its status is sent: poll, with a deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5.0
    while loop.time() < deadline:
        if handled(method, code) == expected:
            return
        await asyncio.sleep(0.01)
    assert handled(method, code) == expected


async def stop_while_watching(
    server: RoostServer, health: health_pb2_grpc.HealthStub
) -> tuple[asyncio.Task[None], list[int]]:
    """Start a graceful stop; returns it (still draining) and the statuses the health
    Watch stream reported up to NOT_SERVING."""
    watch = health.Watch(health_pb2.HealthCheckRequest(service=NAME))
    seen = [(await watch.read()).status]
    stopping = asyncio.create_task(server.stop())
    while seen[-1] != health_pb2.HealthCheckResponse.NOT_SERVING:
        seen.append((await watch.read()).status)
    watch.cancel()
    return stopping, seen


def handled(method: str, code: str) -> float:
    value = REGISTRY.get_sample_value(
        "roost_grpc_server_handled_total",
        {"service": "inference", "method": method, "code": code},
    )
    return value or 0.0


async def test_predict_as_hub(served: tuple[RoostServer, Path]) -> None:
    server, certs = served
    before = handled("Predict", "OK")
    resp = await stub(server, certs, Role.HUB).Predict(
        pb.PredictRequest(model_name="linear", input=tensor([2.0, 0.0, 0.0])), timeout=5
    )
    assert resp.prediction.label == "yes"
    assert resp.model.sha256
    assert resp.model.version == "0.0.1"
    assert np.isclose(sum(resp.prediction.values), 1.0)
    await eventually_handled("Predict", "OK", before + 1)


async def test_batch_and_explain(served: tuple[RoostServer, Path]) -> None:
    server, certs = served
    s = stub(server, certs, Role.HUB)
    batch = await s.PredictBatch(
        pb.PredictBatchRequest(model_name="linear", inputs=[tensor([1, 0, 0]), tensor([0, 0, 1])]),
        timeout=5,
    )
    assert [p.label for p in batch.predictions] == ["yes", "no"]
    exp = await s.Explain(
        pb.ExplainRequest(model_name="linear", input=tensor([1, 7, 0])), timeout=5
    )
    by_name = {a.feature: a.attribution for a in exp.attributions}
    assert abs(by_name["f1"]) < 1e-6
    assert by_name["f0"] > 0


@pytest.mark.parametrize(
    ("request_", "code", "text"),
    [
        (
            pb.PredictRequest(model_name="linear", input=tensor([1.0])),
            "INVALID_ARGUMENT",
            "input.float_values: 1 values, the model takes 3",
        ),
        (
            pb.PredictRequest(model_name="linear", input=tensor([1.0, float("nan"), 0.0])),
            "INVALID_ARGUMENT",
            "input.float_values[1] (f1): NaN is not allowed",
        ),
        (pb.PredictRequest(model_name="linear"), "INVALID_ARGUMENT", "input: required"),
        (pb.PredictRequest(input=tensor([1, 2, 3])), "INVALID_ARGUMENT", "model_name: required"),
        (
            pb.PredictRequest(model_name="nope", input=tensor([1, 2, 3])),
            "NOT_FOUND",
            "model_name: 'nope' is not loaded",
        ),
        (
            pb.PredictRequest(model_name="linear", version="9.9", input=tensor([1, 2, 3])),
            "NOT_FOUND",
            "version: 'linear' '9.9' is not loaded",
        ),
    ],
)
async def test_bad_input_codes(
    served: tuple[RoostServer, Path], request_: pb.PredictRequest, code: str, text: str
) -> None:
    server, certs = served
    before = handled("Predict", code)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub(server, certs, Role.HUB).Predict(request_, timeout=5)
    assert e.value.code().name == code
    assert text in (e.value.details() or "")
    await eventually_handled("Predict", code, before + 1)


async def test_oversized_batch(served: tuple[RoostServer, Path]) -> None:
    server, certs = served
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub(server, certs, Role.HUB).PredictBatch(
            pb.PredictBatchRequest(model_name="linear", inputs=[tensor([0, 0, 0])] * 9), timeout=5
        )
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 8" in (e.value.details() or "")


async def test_message_size_limit(tmp_path: Path) -> None:
    registry = ModelRegistry()
    registry.put(linear_model(tmp_path, [1.0, 0.0, -1.0]))
    server = await start(tmp_path, registry, max_message_bytes=1024)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub(server, tmp_path / "certs", Role.HUB).Predict(
                pb.PredictRequest(model_name="linear", input=tensor([0.5] * 1000)), timeout=5
            )
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        await server.stop(0)


async def test_role_is_enforced(served: tuple[RoostServer, Path]) -> None:
    server, certs = served
    auditor = stub(server, certs, Role.AUDITOR)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await auditor.Predict(
            pb.PredictRequest(model_name="linear", input=tensor([1, 2, 3])), timeout=5
        )
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "role 'auditor'" in (e.value.details() or "")
    listed = await auditor.ListModels(pb.ListModelsRequest(), timeout=5)
    assert [m.model.name for m in listed.models] == ["linear"]


async def test_foreign_ca_is_rejected(served: tuple[RoostServer, Path], tmp_path: Path) -> None:
    server, _ = served
    other = tmp_path / "other-ca"
    ensure_certs(other)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub(server, other, Role.HUB).ListModels(pb.ListModelsRequest(), timeout=3)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_internal_errors_are_sanitized(tmp_path: Path) -> None:
    registry = ExplodingRegistry()
    registry.put(linear_model(tmp_path, [1.0, 0.0, -1.0]))
    server = await start(tmp_path, registry)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub(server, tmp_path / "certs", Role.HUB).Predict(
                pb.PredictRequest(model_name="linear", input=tensor([1, 2, 3])), timeout=5
            )
        assert e.value.code() == grpc.StatusCode.INTERNAL
        assert "4242" not in (e.value.details() or "")
        assert "ref" in (e.value.details() or "")
    finally:
        await server.stop(0)


async def test_pagination(served: tuple[RoostServer, Path]) -> None:
    server, certs = served
    s = stub(server, certs, Role.ADMIN)
    page = await s.ListModels(pb.ListModelsRequest(page_size=1), timeout=5)
    assert len(page.models) == 1
    assert page.next_page_token == ""
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await s.ListModels(pb.ListModelsRequest(page_token="garbage!"), timeout=5)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_health_reflection_and_graceful_stop(tmp_path: Path) -> None:
    registry = ModelRegistry()
    registry.put(linear_model(tmp_path, [1.0]))
    server = await start(tmp_path, registry, drain_delay_seconds=1.0)
    channel = aio_channel(
        f"127.0.0.1:{server.port}",
        certs_dir=tmp_path / "certs",
        role=Role.AUDITOR,
        server_role=Role.INFERENCE,
    )
    health = health_pb2_grpc.HealthStub(channel)
    ok = await health.Check(health_pb2.HealthCheckRequest(service=NAME), timeout=5)
    assert ok.status == health_pb2.HealthCheckResponse.SERVING

    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = refl.ServerReflectionInfo()
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    reply = await call.read()
    await call.done_writing()
    names = {s.name for s in reply.list_services_response.service}
    assert NAME in names
    assert "grpc.health.v1.Health" in names

    # NOT_SERVING as soon as the stop begins, while it drains (1 s) before refusing RPCs.
    stopping, seen = await stop_while_watching(server, health)
    assert seen[0] == health_pb2.HealthCheckResponse.SERVING
    during = await health.Check(health_pb2.HealthCheckRequest(service=NAME), timeout=5)
    assert during.status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert not stopping.done()
    await stopping
    await channel.close()
    registry.close()


async def test_plaintext_health_port_serves_only_health(tmp_path: Path) -> None:
    registry = ModelRegistry()
    registry.put(linear_model(tmp_path, [1.0]))
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    health_port = free.getsockname()[1]
    free.close()
    server = await start(tmp_path, registry, health_port=health_port, drain_delay_seconds=1.0)
    assert server.health_port == health_port
    plain = grpc.aio.insecure_channel(f"127.0.0.1:{health_port}")
    health = health_pb2_grpc.HealthStub(plain)
    ok = await health.Check(health_pb2.HealthCheckRequest(service=NAME), timeout=5)
    assert ok.status == health_pb2.HealthCheckResponse.SERVING
    alive = await health.Check(health_pb2.HealthCheckRequest(service=LIVENESS), timeout=5)
    assert alive.status == health_pb2.HealthCheckResponse.SERVING
    # Nothing but health on the plaintext port.
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await pb_grpc.InferenceServiceStub(plain).ListModels(pb.ListModelsRequest(), timeout=5)
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
    # Bytes that are no HealthCheckRequest: INVALID_ARGUMENT there too.
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await plain.unary_unary("/grpc.health.v1.Health/Check")(GARBAGE, timeout=5)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "grpc.health.v1.HealthCheckRequest" in (e.value.details() or "")
    # The real port still refuses plaintext callers.
    with pytest.raises(grpc.aio.AioRpcError):
        await health_pb2_grpc.HealthStub(
            grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        ).Check(health_pb2.HealthCheckRequest(), timeout=2)
    # The probes' port answers Check (on its own threads): NOT_SERVING from the start of
    # the stop, while it drains; a draining service is still alive.
    stopping = asyncio.create_task(server.stop())
    during = await health.Check(health_pb2.HealthCheckRequest(service=NAME), timeout=5)
    assert during.status == health_pb2.HealthCheckResponse.NOT_SERVING
    alive = await health.Check(health_pb2.HealthCheckRequest(service=LIVENESS), timeout=5)
    assert alive.status == health_pb2.HealthCheckResponse.SERVING
    assert not stopping.done()
    await stopping
    await plain.close()
    registry.close()


async def test_predict_batch_explains_each_prediction_like_explain(
    served: tuple[RoostServer, Path],
) -> None:
    server, certs = served
    s = stub(server, certs, Role.HUB)
    inputs = [tensor([2.0, 5.0, 0.5]), tensor([-1.0, 3.0, 4.0])]
    batch = await s.PredictBatch(
        pb.PredictBatchRequest(model_name="linear", inputs=inputs, explain_top_k=2), timeout=5
    )
    for t, p in zip(inputs, batch.predictions, strict=True):
        single = await s.Explain(
            pb.ExplainRequest(model_name="linear", input=t, top_k=2), timeout=5
        )
        got = [(a.feature, a.attribution) for a in p.attributions]
        want = [(a.feature, a.attribution) for a in single.attributions]
        assert [f for f, _ in got] == [f for f, _ in want]
        assert [a for _, a in got] == pytest.approx([a for _, a in want], abs=1e-6)
        assert len(got) == 2
        assert "f1" not in [f for f, _ in got]  # the ignored feature ranks last
    plain = await s.PredictBatch(pb.PredictBatchRequest(model_name="linear", inputs=inputs))
    assert all(not p.attributions for p in plain.predictions)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await s.PredictBatch(
            pb.PredictBatchRequest(model_name="linear", inputs=inputs, explain_top_k=-1)
        )
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_policy_must_cover_exactly_the_service_methods(tmp_path: Path) -> None:
    registry = ModelRegistry()
    servicer = InferenceServicer(registry, max_batch=8)
    add = pb_grpc.add_InferenceServiceServicer_to_server
    missing = {k: v for k, v in POLICY.items() if not k.endswith("/Explain")}
    with pytest.raises(PolicyError, match="no entry for Explain"):
        Registration.of(SERVICE, servicer, add, missing)
    extra = {**POLICY, f"/{NAME}/Retrain": frozenset({Role.ADMIN})}
    with pytest.raises(PolicyError, match=f"/{NAME}/Retrain, which the service does not have"):
        Registration.of(SERVICE, servicer, add, extra)
    reg = Registration.of(SERVICE, servicer, add, POLICY)
    with pytest.raises(PolicyError, match="registered twice"):
        RoostServer(ServiceConfig(certs_dir=tmp_path), Role.INFERENCE, [reg, reg])
    registry.close()


GARBAGE = b"\xff\xff\xff\xff"  # field 0 / truncated varint: no protobuf parser accepts it


def raw_call(server: RoostServer, certs: Path, role: Role, method: str) -> Any:
    """A unary call of ``method`` sending raw bytes (identity serializers)."""
    channel = aio_channel(
        f"127.0.0.1:{server.port}", certs_dir=certs, role=role, server_role=Role.INFERENCE
    )
    return channel.unary_unary(f"/{NAME}/{method}")


async def test_undecodable_requests_are_invalid_argument_without_a_traceback(
    served: tuple[RoostServer, Path], caplog: pytest.LogCaptureFixture
) -> None:
    server, certs = served
    before = handled("Predict", "INVALID_ARGUMENT")
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await raw_call(server, certs, Role.HUB, "Predict")(GARBAGE, timeout=5)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "roost.inference.v1.PredictRequest" in (e.value.details() or "")
    await eventually_handled("Predict", "INVALID_ARGUMENT", before + 1)
    assert not [r for r in caplog.records if r.exc_info or r.levelname == "ERROR"]
    # The role is checked first: a caller who may not call the method learns only that.
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await raw_call(server, certs, Role.AUDITOR, "Predict")(GARBAGE, timeout=5)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # The server keeps serving.
    resp = await stub(server, certs, Role.HUB).Predict(
        pb.PredictRequest(model_name="linear", input=tensor([2.0, 0.0, 0.0])), timeout=5
    )
    assert resp.prediction.label == "yes"


async def test_an_undecodable_message_in_a_request_stream_is_invalid_argument(
    served: tuple[RoostServer, Path],
) -> None:
    server, certs = served
    channel = aio_channel(
        f"127.0.0.1:{server.port}", certs_dir=certs, role=Role.HUB, server_role=Role.INFERENCE
    )
    call = channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
    labels = {"service": "inference", "method": "ServerReflectionInfo"}
    before = REGISTRY.get_sample_value("roost_grpc_server_undecodable_total", labels) or 0.0
    stream = call()
    await stream.write(GARBAGE)
    await stream.done_writing()
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stream.read()
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert REGISTRY.get_sample_value("roost_grpc_server_undecodable_total", labels) == before + 1


async def test_long_echoed_input_is_cut_from_error_messages(
    served: tuple[RoostServer, Path],
) -> None:
    server, certs = served
    name = "m" * 64  # the longest model name Predict accepts
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub(server, certs, Role.HUB).Predict(
            pb.PredictRequest(model_name=name, input=tensor([1.0, 2.0, 3.0])), timeout=5
        )
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    details = e.value.details() or ""
    assert "(64 characters)" in details
    assert "m" * 41 not in details
