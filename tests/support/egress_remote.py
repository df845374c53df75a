"""The two places a hub with fleet learning and metrics sync on may reach: a real Flower
SuperLink (over TLS) and a real Prometheus receiving remote writes, each on a loopback
address of its own so that the egress test can tell them from the stack's services
(127.0.0.1). Used by :mod:`tests.support.egress_driver` inside the traced namespace.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cli.fleet import FleetConfig, start_fleet_node
from cli.fleet_server import FleetServer
from cli.prometheus_config import MetricsConfig
from cli.stack import Stack
from tests.support.prometheus import receiver, stored_series
from tests.support.waiting import wait_until

SUPERLINK_HOST = "127.0.0.2"
RECEIVER_HOST = "127.0.0.3"


@dataclass(frozen=True)
class RemoteEnds:
    superlink: FleetServer
    receiver_port: int

    @property
    def remote_write_url(self) -> str:
        return f"http://{RECEIVER_HOST}:{self.receiver_port}/api/v1/write"

    def allowed(self) -> list[tuple[str, int]]:
        """The (address, port) pairs the hub is configured to reach."""
        return [(SUPERLINK_HOST, self.superlink.port), (RECEIVER_HOST, self.receiver_port)]


@contextlib.contextmanager
def remote_ends(work: Path) -> Iterator[RemoteEnds]:
    """A receiver Prometheus on 127.0.0.3 and a SuperLink (TLS, its own CA) on 127.0.0.2."""
    with receiver(work / "receiver", host=RECEIVER_HOST) as port:
        stack = Stack(work / "fleet-server", hub_id="fleet-server")
        try:
            server = FleetServer(stack, host=SUPERLINK_HOST)
            server.start()
            yield RemoteEnds(server, port)
        finally:
            stack.stop()


def connect_hub(stack: Stack, ends: RemoteEnds) -> None:
    """Metrics sync to the receiver and a SuperNode to the SuperLink, as ``roost run``
    starts them from ``[metrics] remote_write_url`` and ``[fleet]``."""
    stack.start_prometheus(
        MetricsConfig(remote_write_url=ends.remote_write_url, scrape_interval_seconds=1)
    )
    assert ends.superlink.tls is not None
    fleet = FleetConfig(
        enabled=True,
        superlink=ends.superlink.address,
        root_certificates=ends.superlink.tls.ca,
    )
    fleet.check()
    assert start_fleet_node(stack, fleet)


def exercised(stack: Stack, ends: RemoteEnds, timeout: float = 120) -> dict[str, object]:
    """Both paths carried something: the receiver holds series of this hub (only remote
    writes put them there) and the SuperLink lists this hub's SuperNode online."""

    def hub_series() -> int:
        return sum(
            1
            for s in stored_series(ends.receiver_port, RECEIVER_HOST)
            if ("hub", stack.hub_id) in s
        )

    wait_until(lambda: hub_series() > 0, timeout, "the hub's series at the receiver", interval=1)

    def online() -> list[dict[str, object]]:
        listed = json.loads(ends.superlink.flwr("supernode", "list", "--format", "json"))
        return [n for n in listed["nodes"] if n["status"] == "online"]

    wait_until(lambda: len(online()) == 1, timeout, "the hub's SuperNode online", interval=1)
    return {"remote_write_series": hub_series(), "supernodes_online": len(online())}
