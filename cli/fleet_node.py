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
    node_config = {
        protocol.NODE_HUB_ID: stack.hub_id,
        protocol.NODE_CERTS_DIR: str(stack.certs_dir),
        protocol.NODE_PERSONALIZATION: f"127.0.0.1:{stack.port_of(Role.PERSONALIZATION)}",
        protocol.NODE_AUDIT: f"127.0.0.1:{stack.port_of(Role.AUDIT)}",
        protocol.NODE_SUPERLINK: superlink,
        protocol.NODE_MAX_T: str(max_min_participants),
    }
    tls = (
        ["--insecure"]
        if root_certificates is None
        else ["--root-certificates", str(root_certificates)]
    )
    argv = [
        flower_bin("flower-supernode"),
        *tls,
        "--superlink",
        superlink,
        "--port",
        str(port),
        "--node-config",
        node_config_arg(node_config),
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
