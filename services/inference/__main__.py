"""``python -m services.inference``: the inference service process."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from services.inference.app import InferenceApp
from services.inference.config import InferenceConfig
from services.inference.servicer import POLICY
from services.kit.auth import Policy, Role
from services.kit.config import load_config
from services.kit.server import Registration, configure_process, run_service

log = logging.getLogger(__name__)


def main() -> None:
    config = load_config(InferenceConfig, "inference")
    configure_process(config.log_level)
    app = InferenceApp(config)

    async def build() -> tuple[Sequence[Registration], Policy]:
        await app.start()
        return [app.registration()], POLICY

    async def on_stop() -> None:
        await app.close()

    asyncio.run(run_service(config, Role.INFERENCE, build, on_stop))


if __name__ == "__main__":
    main()
