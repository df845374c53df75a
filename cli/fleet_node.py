"""The hub side of fleet learning: a Flower SuperNode beside the hub's services.

Started by ``roost run`` only when ``[fleet] enabled`` (:func:`cli.fleet.start_fleet_node`),
as a child of the hub's :class:`~cli.stack.Stack` (supervised, restarted, stopped with its
``flower-superexec`` and ``flwr-clientapp`` children). Its ClientApp
(``fleet/client_app.py``) calls this hub's personalization and audit services as the hub.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from cli.fleet_server import flower_bin, flower_env
from cli.stack import Launch, Stack, StackError, free_port
from fleet import protocol
from fleet.hub_node import node_config_arg
from services.kit.auth import Role


def supernode_args(
    *,
    hub_id: str,
    certs_dir: Path,
    personalization: str,
    audit: str,
    superlink: str,
    port: int,
    root_certificates: Path | None,
    max_min_participants: int,
    health_address: str = "",
) -> list[str]:
    """``flower-supernode``'s arguments: the one command line of the hub's SuperNode, for
    ``roost run`` (:func:`start_supernode`) and k3s's fleet component
    (``k3s/components/fleet/supernode.yaml``; tests/unit/k3s/test_fleet.py renders it and
    compares). ``root_certificates`` None: no TLS to the SuperLink. ``health_address``:
    a plaintext grpc.health.v1 server for the kubelet's probes ("" = none)."""
    node_config = {
        protocol.NODE_HUB_ID: hub_id,
        protocol.NODE_CERTS_DIR: str(certs_dir),
        protocol.NODE_PERSONALIZATION: personalization,
        protocol.NODE_AUDIT: audit,
        protocol.NODE_SUPERLINK: superlink,
        protocol.NODE_MAX_T: str(max_min_participants),
    }
    tls = (
        ["--insecure"]
        if root_certificates is None
        else ["--root-certificates", str(root_certificates)]
    )
    health = ["--health-server-address", health_address] if health_address else []
    return [
        *tls,
        "--superlink",
        superlink,
        "--port",
        str(port),
        *health,
        "--node-config",
        node_config_arg(node_config),
    ]


def start_supernode(
    stack: Stack,
    superlink: str,
    *,
    port: int = 0,
    root_certificates: Path | None = None,
    max_min_participants: int = protocol.DEFAULT_MAX_T,
    timeout: float = 60,
) -> dict[str, Any]:
    """Fleet learning (opt-in): a Flower SuperNode connected to ``superlink``; its
    ClientApp (fleet/client_app.py) calls this hub's personalization and audit
    services as the hub. Needs both running. ``root_certificates`` None: no TLS."""
    port = port or free_port()
    argv = [
        flower_bin("flower-supernode"),
        *supernode_args(
            hub_id=stack.hub_id,
            certs_dir=stack.certs_dir,
            personalization=f"127.0.0.1:{stack.port_of(Role.PERSONALIZATION)}",
            audit=f"127.0.0.1:{stack.port_of(Role.AUDIT)}",
            superlink=superlink,
            port=port,
            root_certificates=root_certificates,
            max_min_participants=max_min_participants,
        ),
    ]
    env = flower_env(stack.home / "run" / "flwr-supernode")
    proc = stack._spawn("supernode", Launch(argv, env, ready_port=port, detaches_children=True))
    deadline = time.monotonic() + timeout
    while not stack.poll_ready("supernode"):
        if not proc.alive():
            raise StackError(f"supernode exited during start-up:\n{proc.log_tail()}")
        if time.monotonic() > deadline:
            raise StackError(f"supernode not ready after {timeout:.0f}s:\n{proc.log_tail()}")
        time.sleep(0.05)
    proc.info = {"port": port, "superlink": superlink}
    return proc.info
