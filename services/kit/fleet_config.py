"""``[fleet]`` of roost.toml (env ``ROOST_FLEET_*``): whether this hub takes part in fleet
learning, and where. Read by ``roost run`` (which starts a SuperNode only when enabled,
:mod:`cli.fleet`) and by the hub process (its Home Assistant "Fleet learning" entities,
:mod:`hub.homeassistant.fleet_entities`); in k3s the ``fleet`` component sets
``ROOST_FLEET_ENABLED`` on the hub and runs the SuperNode (k3s/components/fleet).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class FleetConfig:
    """``[fleet]`` of roost.toml (env ``ROOST_FLEET_*``). Off by default: a hub that has
    not opted in starts no SuperNode and opens no connection to any fleet."""

    enabled: bool = False
    # The SuperLink's address (host:port); required when enabled.
    superlink: str = ""
    # Without TLS to the SuperLink (loopback and tests only); else its CA's certificate.
    insecure: bool = False
    root_certificates: Path | None = None
    # The SuperNode's own runtime API port on 127.0.0.1; 0 picks a free one.
    supernode_port: int = 0
    # The largest min-participants (t) this hub accepts: it adds 1/t of the noise variance
    # and trusts the server that at least t hubs are in each sum (docs/fleet.md).
    max_min_participants: int = 100

    def check(self) -> None:
        if not self.enabled:
            return
        host, _, port = self.superlink.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError("[fleet] superlink: host:port required when enabled")
        if self.max_min_participants < 1:
            raise ValueError("[fleet] max_min_participants: must be >= 1")
        if self.insecure and self.root_certificates is not None:
            raise ValueError("[fleet] root_certificates and insecure = true: choose one")
        if self.insecure:
            return
        if self.root_certificates is None:
            raise ValueError(
                "[fleet] enabled needs root_certificates: the CA certificate of the "
                "SuperLink (the file `roost fleet serve` prints, docs/fleet.md); "
                "insecure = true (no TLS) is for tests on loopback only"
            )
