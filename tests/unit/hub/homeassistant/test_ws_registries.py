"""The registry reader against a small websocket server speaking Home Assistant's protocol."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.sync.server import Server, ServerConnection, serve

from hub.homeassistant.ws_registries import RegistryReadError, read_registries
from tests.support.waiting import wait_until

TOKEN = "secret-token"
CLOSE_CODES: list[int | None] = []


def _handler(fail: str | None) -> Any:
    def handle(ws: ServerConnection) -> None:
        ws.send(json.dumps({"type": "auth_required"}))
        auth = json.loads(ws.recv())
        if auth.get("access_token") != TOKEN:
            ws.send(json.dumps({"type": "auth_invalid"}))
            return
        ws.send(json.dumps({"type": "auth_ok"}))
        try:
            while True:
                msg = json.loads(ws.recv())
                if msg["type"] == fail:
                    reply = {"success": False, "error": {"code": "unauthorized"}}
                else:
                    reply = {"success": True, "result": [{"asked": msg["type"]}]}
                ws.send(json.dumps({"id": msg["id"], "type": "result", **reply}))
        except Exception:
            CLOSE_CODES.append(ws.close_code)

    return handle


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[str]:
    srv: Server = serve(_handler(getattr(request, "param", None)), "127.0.0.1", 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"ws://127.0.0.1:{srv.socket.getsockname()[1]}"
    srv.shutdown()


def test_reads_every_registry_and_closes_normally(server: str) -> None:
    CLOSE_CODES.clear()
    out = read_registries(server, TOKEN, timeout=5)
    assert out == {
        "area": [{"asked": "config/area_registry/list"}],
        "device": [{"asked": "config/device_registry/list"}],
        "entity": [{"asked": "config/entity_registry/list"}],
        "states": [{"asked": "get_states"}],
    }
    wait_until(lambda: bool(CLOSE_CODES), 5, "the server saw the close")
    assert CLOSE_CODES == [1000]


def test_a_refused_token_is_said(server: str) -> None:
    with pytest.raises(RegistryReadError, match="refused the token"):
        read_registries(server, "wrong", timeout=5)


@pytest.mark.parametrize("server", ["config/device_registry/list"], indirect=True)
def test_a_refused_command_names_the_registry(server: str) -> None:
    with pytest.raises(RegistryReadError, match="device: unauthorized"):
        read_registries(server, TOKEN, timeout=5)
