"""``python -m services.inference``: the inference service process."""

from __future__ import annotations

import functools

from roost.inference.v1 import inference_service_pb2_grpc as pb_grpc
from services.inference.app import InferenceApp
from services.inference.config import InferenceConfig
from services.inference.servicer import POLICY, SERVICE
from services.kit.app import App
from services.kit.auth import Role
from services.kit.config import load_config


async def setup(config: InferenceConfig, app: App) -> None:
    """Load the models (and follow the registry), then serve them."""
    inference = app.closing(InferenceApp(config))
    await inference.start()
    app.register(
        SERVICE, inference.servicer, pb_grpc.add_InferenceServiceServicer_to_server, POLICY
    )


def main() -> None:
    config = load_config(InferenceConfig, "inference")
    App(config, Role.INFERENCE, functools.partial(setup, config)).run()


if __name__ == "__main__":
    main()
