"""A SuperNode's hub: which services its ClientApp calls, as whom (node config -> channels).

The ClientApp runs in a ``flwr-clientapp`` process the hub's SuperNode starts per message;
it reaches the hub's own personalization and audit services over mTLS with the hub's
identity (``Role.HUB``), as the hub runtime does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from fleet import protocol
from services.kit.auth import Role
from services.kit.client import sync_channel


@dataclass(frozen=True)
class HubNode:
    hub_id: str
    certs_dir: Path
    personalization: str
    audit: str
    superlink: str
    max_min_participants: int = protocol.DEFAULT_MAX_T

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any]) -> HubNode:
        keys = (
            protocol.NODE_HUB_ID,
            protocol.NODE_CERTS_DIR,
            protocol.NODE_PERSONALIZATION,
            protocol.NODE_AUDIT,
            protocol.NODE_SUPERLINK,
        )
        missing = [k for k in keys if not str(node_config.get(k, ""))]
        if missing:
            raise ValueError(f"SuperNode --node-config lacks {', '.join(missing)}")
        return cls(
            hub_id=str(node_config[protocol.NODE_HUB_ID]),
            certs_dir=Path(str(node_config[protocol.NODE_CERTS_DIR])),
            personalization=str(node_config[protocol.NODE_PERSONALIZATION]),
            audit=str(node_config[protocol.NODE_AUDIT]),
            superlink=str(node_config[protocol.NODE_SUPERLINK]),
            max_min_participants=int(node_config.get(protocol.NODE_MAX_T, protocol.DEFAULT_MAX_T)),
        )

    def channel(self, service: Role) -> grpc.Channel:
        """A channel to one of the hub's services, as the hub."""
        target = {Role.PERSONALIZATION: self.personalization, Role.AUDIT: self.audit}[service]
        return sync_channel(target, certs_dir=self.certs_dir, role=Role.HUB, server_role=service)


def node_config_arg(values: Mapping[str, str]) -> str:
    """``flower-supernode --node-config``: space-separated ``key="value"`` pairs."""
    for k, v in values.items():
        if '"' in v or "\\" in v or " " in k:
            raise ValueError(f"node config {k}: quotes and backslashes are not supported")
    return " ".join(f'{k}="{v}"' for k, v in values.items())
