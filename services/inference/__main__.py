"""``python -m services.inference``: the inference service process."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from roost.inference.v1 import inference_service_pb2 as pb
from roost.inference.v1 import inference_service_pb2_grpc as pb_grpc
from services.inference.config import InferenceConfig
from services.inference.registry import ModelRegistry
from services.inference.servicer import POLICY, InferenceServicer
from services.kit.auth import Policy, Role
from services.kit.config import load_config
from services.kit.server import Registration, configure_process, run_service

log = logging.getLogger(__name__)


def main() -> None:
    config = load_config(InferenceConfig, "inference")
    configure_process(config.log_level)
    registry: ModelRegistry | None = None

    async def build() -> tuple[Sequence[Registration], Policy]:
        nonlocal registry
        registry = ModelRegistry.from_directory(config.model_dir, config.threads)
        servicer = InferenceServicer(registry, config.max_batch)
        name = pb.DESCRIPTOR.services_by_name["InferenceService"].full_name
        reg = Registration(
            name, lambda s: pb_grpc.add_InferenceServiceServicer_to_server(servicer, s)
        )
        return [reg], POLICY

    async def on_stop() -> None:
        if registry is not None:
            registry.close()

    asyncio.run(run_service(config, Role.INFERENCE, build, on_stop))


if __name__ == "__main__":
    main()
