"""A test client for Home Assistant's REST and websocket APIs.

REST goes through urllib; websocket commands run in a tiny script under HA's own Python
(which has aiohttp; Roost's .venv has no websocket client).
"""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.support.ha_process import HomeAssistantError, child_env
from tests.support.waiting import wait_until

WS_SCRIPT = r"""
import asyncio, json, sys
import aiohttp

async def main() -> None:
    req = json.load(sys.stdin)
    out = []
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(req["url"], max_msg_size=0) as ws:
            assert (await ws.receive_json())["type"] == "auth_required"
            await ws.send_json({"type": "auth", "access_token": req["token"]})
            msg = await ws.receive_json()
            if msg["type"] != "auth_ok":
                sys.exit(f"websocket auth failed: {msg}")
            for i, command in enumerate(req["commands"], 1):
                await ws.send_json({**command, "id": i})
                while True:
                    msg = await ws.receive_json()
                    if msg.get("id") == i and msg.get("type") == "result":
                        break
                out.append(msg)
    json.dump(out, sys.stdout)

asyncio.run(asyncio.wait_for(main(), float(sys.argv[1])))
"""


class HaApi:
    """REST and websocket calls to the HA on 127.0.0.1:``port`` with ``token``; websocket
    calls need ``venv`` (HA's venv, whose Python has aiohttp)."""

    def __init__(self) -> None:
        self.port = 0
        self.token = ""
        self.venv: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ---------------------------------------------------------------- REST

    def rest(
        self,
        method: str,
        path: str,
        json_body: Any = None,
        *,
        form: Mapping[str, str] | None = None,
        auth: bool = True,
        timeout: float = 10,
    ) -> Any:
        """Call the REST API; returns the decoded JSON (or text); raises on HTTP errors."""
        headers: dict[str, str] = {}
        data: bytes | None = None
        if auth:
            headers["Authorization"] = f"Bearer {self.token}"
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif json_body is not None:
            data = json.dumps(json_body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                body = response.read().decode()
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")
            raise HomeAssistantError(f"{method} {path} -> {e.code}: {detail}") from e
        if not body:
            return None
        try:
            return json.loads(body)
        except json.JSONDecodeError:
            return body

    def states(self) -> dict[str, dict[str, Any]]:
        return {s["entity_id"]: s for s in self.rest("GET", "/api/states")}

    def state(self, entity_id: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = self.rest("GET", f"/api/states/{entity_id}")
        except HomeAssistantError as e:
            if "-> 404" in str(e):
                return None
            raise
        return result

    def wait_state(
        self,
        entity_id: str,
        predicate: Callable[[dict[str, Any]], bool] | None = None,
        timeout: float = 15,
    ) -> dict[str, Any]:
        """Poll until the entity exists (and ``predicate(state_dict)`` holds)."""
        last: list[dict[str, Any] | None] = [None]

        def matches() -> dict[str, Any] | None:
            last[0] = state = self.state(entity_id)
            if state is not None and (predicate is None or predicate(state)):
                return state
            return None

        return wait_until(
            matches, timeout, lambda: f"{entity_id} as expected; last: {last[0]}", interval=0.1
        )

    def wait_removed(self, entity_id: str, timeout: float = 15) -> None:
        wait_until(
            lambda: self.state(entity_id) is None, timeout, f"{entity_id} to go", interval=0.1
        )

    def call_service(self, domain: str, service: str, data: Mapping[str, Any] | None = None) -> Any:
        return self.rest("POST", f"/api/services/{domain}/{service}", dict(data or {}))

    def logbook(
        self, entity_id: str | None = None, start: datetime | None = None
    ) -> list[dict[str, Any]]:
        """Logbook entries since ``start`` (default: an hour ago), optionally for one entity."""
        start = start or datetime.now(UTC) - timedelta(hours=1)
        query = {"end_time": (datetime.now(UTC) + timedelta(minutes=1)).isoformat()}
        if entity_id:
            query["entity"] = entity_id
        path = f"/api/logbook/{urllib.parse.quote(start.isoformat())}"
        result: list[dict[str, Any]] = self.rest("GET", f"{path}?{urllib.parse.urlencode(query)}")
        return result

    # ---------------------------------------------------------------- websocket

    def ws_many(self, commands: Sequence[Mapping[str, Any]], timeout: float = 30) -> list[Any]:
        """Run websocket commands (one connection, in order) under HA's Python; the results."""
        assert self.venv is not None
        request = {
            "url": f"ws://127.0.0.1:{self.port}/api/websocket",
            "token": self.token,
            "commands": list(commands),
        }
        proc = subprocess.run(
            [str(self.venv / "bin" / "python"), "-c", WS_SCRIPT, str(timeout)],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            timeout=timeout + 15,
            env=child_env(),
            check=False,
        )
        if proc.returncode != 0:
            raise HomeAssistantError(f"websocket call failed: {proc.stderr[-2000:]}")
        results: list[Any] = []
        for command, reply in zip(commands, json.loads(proc.stdout), strict=True):
            if not reply.get("success"):
                raise HomeAssistantError(f"websocket {command} -> {reply.get('error')}")
            results.append(reply.get("result"))
        return results

    def ws(self, command: Mapping[str, Any], timeout: float = 30) -> Any:
        return self.ws_many([command], timeout)[0]

    def entity_registry(self) -> dict[str, dict[str, Any]]:
        return {e["entity_id"]: e for e in self.ws({"type": "config/entity_registry/list"})}

    def device_registry(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.ws({"type": "config/device_registry/list"})
        return result

    def area_registry(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.ws({"type": "config/area_registry/list"})
        return result
