"""Read Home Assistant's registries over its websocket API, and close it properly.

REST does not serve the area, device and entity registries, so the hub asks the
websocket API for them (``config/<name>_registry/list``, plus ``get_states``).
homeassistant-api's ``WebsocketClient`` closes its socket with close code 0, which
Home Assistant logs as a warning ("Invalid close code: 0") on every read; this reader
speaks the same few messages with the ``websockets`` client and closes with 1000
(normal closure). Blocking: the hub runs it in a worker thread.
"""

from __future__ import annotations

import json
from typing import Any

from websockets.sync.client import connect

REGISTRIES = ("area", "device", "entity")
# Home Assistant's registries of a large home run to a few MiB.
MAX_MESSAGE_BYTES = 1 << 24


class RegistryReadError(Exception):
    """Home Assistant refused the token or a command; the message says which."""


def _recv(ws: Any, timeout: float) -> dict[str, Any]:
    msg = json.loads(ws.recv(timeout))
    if not isinstance(msg, dict):
        raise RegistryReadError("Home Assistant sent a message that is not an object")
    return msg


def read_registries(ws_url: str, token: str, *, timeout: float) -> dict[str, list[Any]]:
    """``{"area": [...], "device": [...], "entity": [...], "states": [...]}``."""
    commands = dict(enumerate((*REGISTRIES, "states"), start=1))
    with connect(
        f"{ws_url}/api/websocket",
        open_timeout=timeout,
        close_timeout=timeout,
        max_size=MAX_MESSAGE_BYTES,
        proxy=None,
    ) as ws:
        if _recv(ws, timeout).get("type") != "auth_required":
            raise RegistryReadError("Home Assistant did not ask for authentication")
        ws.send(json.dumps({"type": "auth", "access_token": token}))
        auth = _recv(ws, timeout)
        if auth.get("type") != "auth_ok":
            raise RegistryReadError(f"Home Assistant refused the token ({auth.get('type')})")
        for i, name in commands.items():
            kind = "get_states" if name == "states" else f"config/{name}_registry/list"
            ws.send(json.dumps({"id": i, "type": kind}))
        out: dict[str, list[Any]] = {}
        while len(out) < len(commands):
            msg = _recv(ws, timeout)
            asked = commands.get(msg.get("id", 0))
            if msg.get("type") != "result" or asked is None:
                continue
            if not msg.get("success") or not isinstance(msg.get("result"), list):
                error = msg.get("error") or {}
                raise RegistryReadError(f"{asked}: {error.get('code', 'not a list')}")
            out[asked] = msg["result"]
        return out
