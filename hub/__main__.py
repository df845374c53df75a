"""``python -m hub``: the hub process."""

from __future__ import annotations

import asyncio

from hub.app import main_async
from hub.config import HubConfig
from services.kit.config import load_config
from services.kit.process import configure_process


def main() -> None:
    config = load_config(HubConfig, "hub")
    configure_process(config.log_level)
    asyncio.run(main_async(config))


if __name__ == "__main__":
    main()
