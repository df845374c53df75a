"""``python -m hub``: the hub process."""

from __future__ import annotations

import asyncio

from hub.app import main_async
from hub.config import HubConfig
from services.kit.config import load_config
from services.kit.fleet_config import FleetConfig
from services.kit.process import configure_process
from services.kit.watchdog import LoopWatchdog, ProbeServer


async def serve(config: HubConfig, fleet: FleetConfig) -> None:
    """The hub, with its event loop watched: with ``health_port`` set, the probes' port
    answers ``liveness`` from the watchdog (services/kit/watchdog.py) and ``""`` SERVING
    while the loop runs."""
    watchdog = LoopWatchdog(config.loop_stall_seconds)
    watchdog.start()
    probe: ProbeServer | None = None
    try:
        if config.health_port:
            probe = ProbeServer(watchdog, config.metrics_host, config.health_port)
            probe.start()
            probe.health.set("", serving=True)
        await main_async(config, fleet_enabled=fleet.enabled)
    finally:
        if probe is not None:
            probe.stop()
        await watchdog.stop()


def main() -> None:
    config = load_config(HubConfig, "hub")
    # Only whether fleet learning is on (its Home Assistant entities); `roost run` checks
    # and uses the rest.
    fleet = load_config(FleetConfig, "fleet")
    configure_process(config.log_level)
    asyncio.run(serve(config, fleet))


if __name__ == "__main__":
    main()
