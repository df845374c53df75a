"""The inference service asked for an accelerator this machine lacks: it serves on CPU,
says so once in its log, and ListModels names the provider each model runs on."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.stack import Stack
from roost.inference.v1 import inference_service_pb2 as pb
from roost.inference.v1 import inference_service_pb2_grpc as pb_grpc
from services.kit.auth import Role
from tests.support.stacks import service_channel

pytestmark = pytest.mark.integration

WANTED = "OpenVINOExecutionProvider"


async def test_a_missing_accelerator_falls_back_to_cpu_and_says_so(tmp_path: Path) -> None:
    with Stack(tmp_path / "home", hub_id="ep") as stack:
        stack.start_service(
            Role.INFERENCE,
            {"ROOST_INFERENCE_EXECUTION_PROVIDERS": f"{WANTED},CPUExecutionProvider"},
        )
        async with service_channel(stack, Role.INFERENCE, Role.HUB) as channel:
            listed = await pb_grpc.InferenceServiceStub(channel).ListModels(
                pb.ListModelsRequest(), timeout=10
            )
        log = stack.procs["inference"].log_path.read_text()
    assert len(listed.models) >= 4
    assert {m.execution_provider for m in listed.models} == {"CPUExecutionProvider"}
    fallbacks = [line for line in log.splitlines() if f"has no {WANTED}" in line]
    assert len(fallbacks) == 1, fallbacks
    assert "falling back to CPUExecutionProvider" in fallbacks[0]
