"""Starting a real stack (mosquitto + service processes + hub) for integration tests, and
talking to its services."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest

from cli.stack import Stack, StackError, find_mosquitto
from services.kit.auth import Role
from services.kit.client import aio_channel


def require_mosquitto() -> None:
    try:
        find_mosquitto()
    except StackError as e:
        if os.environ.get("CI"):
            pytest.fail(f"CI must have mosquitto (make setup installs it): {e}")
        pytest.skip(f"{e}")


def start_stack(home: Path, **hub_env: str) -> Stack:
    require_mosquitto()
    stack = Stack(home, hub_id="itest")
    try:
        stack.start_broker()
        stack.start_service(Role.AUDIT)
        stack.start_service(Role.INFERENCE)
        stack.start_hub(hub_env)
    except BaseException:
        stack.stop()
        raise
    return stack


def service_channel(stack: Stack, server: Role, role: Role = Role.AUDITOR) -> grpc.aio.Channel:
    """An mTLS channel to the stack's ``server``, as ``role`` (the stack's certificates)."""
    return aio_channel(
        f"127.0.0.1:{stack.port_of(server)}",
        certs_dir=stack.certs_dir,
        role=role,
        server_role=server,
    )
