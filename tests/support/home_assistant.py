"""A real Home Assistant core (2025.4.4) for integration tests, wired to a real mosquitto.

``HomeAssistant(config_dir, broker_port).start()``:

1. ensures HA's own venv (``scripts/setup-ha.sh``; a cache outside the repo, Python 3.13.0
   from pyenv, installed once; a no-op afterwards);
2. writes a fresh config dir: ``http`` on 127.0.0.1 and a free port, ``recorder`` (SQLite in
   the config dir, ``commit_interval: 0``), ``history``, ``logbook``, ``mqtt_statestream``
   (base topic and include filter configurable; added for the second boot) and test entities
   (``input_boolean``, ``input_number`` and ``template`` sensors with a ``device_class``);
3. starts ``hass -c <dir> --skip-pip`` (stdout+stderr of both boots in ``<dir>/hass.log``),
   runs the headless onboarding (owner user -> auth code -> access token -> long-lived
   token), creates the MQTT config entry for the broker, restarts HA once so
   ``mqtt_statestream`` starts, and puts the test entities into areas ("Kitchen",
   "Living Room").

Then ``rest()``, ``states()``, ``state()``, ``call_service()``, ``logbook()``, ``ws()``,
``entity_registry()``, ``device_registry()``, ``area_registry()`` and ``stop()``.
REST goes through urllib; websocket commands run in a tiny script under HA's own Python
(which has aiohttp; Roost's .venv has no websocket client).

Measured on this 2-core machine: ``setup-ha.sh`` 117 s with an empty pip cache, 53 s with a
warm pip cache (e.g. after an interrupted install), 0.02 s when installed. ``start()`` ~10 s
(first boot to RUNNING ~4.5 s, restart ~4 s, onboarding/MQTT/areas the rest); the smoke
module 10-18 s in all. Boot timeouts are 180 s anyway, for loaded CI machines.

Home Assistant quirks hit while building this (2025.4.4):

* HA pins clash with Roost's (Python 3.13, aiohttp, numpy, cryptography...): own venv. Plain
  ``pip install homeassistant`` backtracks for ages: install with the
  ``homeassistant/package_constraints.txt`` taken out of the wheel.
* ``--skip-pip`` means nothing is installed at runtime, so every requirement of every loaded
  integration must be pre-installed, including those HA always loads (bootstrap's
  ``DEFAULT_INTEGRATIONS``: frontend, backup, hardware...). ``logbook`` depends on
  ``frontend``, so the 40 MB ``home-assistant-frontend`` wheel is needed even headless.
  ``setup-ha.sh`` computes the list from the manifests (closure over ``dependencies``).
* ``hass`` does not restart itself: ``homeassistant.restart`` just exits with code 100 and
  expects a supervisor/runner. The harness restarts by SIGTERM + a new process.
* Before onboarding every authenticated endpoint answers 401; ``/api/onboarding`` answers
  without auth, so it is the readiness probe for the first boot.
* ``POST /api/onboarding/users`` needs ``client_id`` as a URL and ``language``; it returns an
  auth code (not a token) and also creates the default areas "Living Room", "Kitchen" and
  "Bedroom", so ``config/area_registry/create`` for "Kitchen" would fail (name in use):
  areas are looked up by name first.
* The ``core_config`` onboarding step is skipped on purpose (it adds a weather entry that calls
  the internet); location, units and time zone come from configuration.yaml instead, which
  also keeps HA from guessing the location online.
* ``default_config:`` is avoided: it pulls in cloud, zeroconf, ssdp, bluetooth, ... Only the
  integrations needed are listed.
* The MQTT integration is config-entry only (YAML ``mqtt: broker:`` is gone): flow
  ``{"handler": "mqtt"}`` goes straight to the ``broker`` step outside the Supervisor.
* ``mqtt_statestream`` sets up only when the MQTT entry exists at boot (it waits for the MQTT
  client and fails with "MQTT integration is not available" otherwise, and there is no
  reload), hence one restart after creating the entry; it is left out of the first boot's
  configuration.yaml so the log has no expected ERROR. Its base topic must differ from the
  discovery prefix. It publishes retained, QoS 1, on state changes only (nothing at
  startup), attributes JSON-encoded under ``<base>/<domain>/<object_id>/<attribute>``.
* Device-based discovery (``homeassistant/device/<id>/config`` with ``cmps``) needs the
  origin (``o``); entity names are prefixed with the device name ("Roost hub test Retrain",
  ``button.roost_hub_test_retrain``). Removing it (empty retained config) drops the entities
  asynchronously: clearing the attributes topic right after makes HA log "Erroneous JSON",
  so the test waits for the entity to go first.
* Harmless log noise with the minimal install: "Skipping pip installation", "zlib_ng and isal
  are not available" and an ERROR "Error loading libturbojpeg" while the frontend stage sets
  up (the camera helper is imported even without cameras; Debian's libturbojpeg0 would
  silence it).
* YAML ``input_boolean``/``input_number`` get a unique_id (their key), so they are in the
  entity registry and can get an area; template entities need an explicit ``unique_id``.
* Retained discovery messages survive in the broker across HA restarts and tests: each module
  gets a fresh broker (persistence off); tests clear what they publish.
* configuration.yaml is written as JSON (valid YAML; Roost's .venv has no PyYAML).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cli.stack import Stack, StackError, find_mosquitto, free_port

REPO = Path(__file__).resolve().parents[2]
SETUP_SCRIPT = REPO / "scripts" / "setup-ha.sh"
HA_VERSION = "2025.4.4"
EXIT_NO_PYTHON = 3  # setup-ha.sh: pyenv's Python 3.13.0 is missing
CLIENT_ID = "http://127.0.0.1:8123/"  # any URL; HA's IndieAuth wants one
OWNER = {"name": "Roost Test", "username": "roost", "password": "roost-test-password"}

DEFAULT_STATESTREAM_BASE = "ha_state"
DEFAULT_STATESTREAM_INCLUDE: dict[str, list[str]] = {
    "domains": ["input_boolean", "input_number", "sensor", "binary_sensor"],
}
# entity_id -> area name; the areas are created if missing.
DEFAULT_AREAS: dict[str, str] = {
    "input_boolean.kitchen_light": "Kitchen",
    "input_boolean.kitchen_presence": "Kitchen",
    "binary_sensor.kitchen_occupancy": "Kitchen",
    "input_number.living_room_temperature": "Living Room",
    "sensor.living_room_temperature": "Living Room",
}

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


class HomeAssistantError(RuntimeError):
    """HA did not start, or a call to it failed."""


class HomeAssistantUnavailable(HomeAssistantError):
    """The HA venv cannot be built on this machine (e.g. no Python 3.13.0)."""


def ensure_venv(timeout: float = 1800) -> Path:
    """Run ``scripts/setup-ha.sh`` (a no-op when installed); return the venv path."""
    try:
        result = subprocess.run(
            [str(SETUP_SCRIPT)], capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as e:
        raise HomeAssistantError(f"setup-ha.sh took over {timeout:.0f}s") from e
    if result.returncode == EXIT_NO_PYTHON:
        raise HomeAssistantUnavailable(result.stderr.strip())
    if result.returncode != 0:
        raise HomeAssistantUnavailable(
            f"setup-ha.sh failed ({result.returncode}):\n{result.stderr[-4000:]}"
        )
    venv = subprocess.run(
        [str(SETUP_SCRIPT), "--print-venv"], capture_output=True, text=True, check=True
    ).stdout.strip()
    return Path(venv)


def _child_env() -> dict[str, str]:
    """Our environment minus what would make HA's Python pick up Roost's packages."""
    drop = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"}
    return {k: v for k, v in os.environ.items() if k not in drop}


class HomeAssistant:
    """One HA core process with its own config dir, talking to the broker on ``broker_port``."""

    def __init__(
        self,
        config_dir: Path,
        broker_port: int,
        *,
        statestream_base: str = DEFAULT_STATESTREAM_BASE,
        statestream_include: Mapping[str, Sequence[str]] | None = None,
        areas: Mapping[str, str] | None = None,
        extra_config: Mapping[str, Any] | None = None,
        log_level: str = "info",
    ) -> None:
        self.config_dir = config_dir.resolve()
        self.broker_port = broker_port
        self.statestream_base = statestream_base
        self.statestream_include = dict(statestream_include or DEFAULT_STATESTREAM_INCLUDE)
        self.areas = dict(DEFAULT_AREAS if areas is None else areas)
        self.extra_config = dict(extra_config or {})
        self.log_level = log_level
        self.port = 0
        self.token = ""
        self.venv: Path | None = None
        self.popen: subprocess.Popen[bytes] | None = None
        self.timings: dict[str, float] = {}

    # ---------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.config_dir / "hass.log"

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def start(self, boot_timeout: float = 180) -> None:
        """Install (if needed), configure, boot, onboard, add MQTT, restart, assign areas."""
        t0 = time.monotonic()
        self.venv = ensure_venv()
        self.timings["venv"] = time.monotonic() - t0
        self.port = free_port()
        # mqtt_statestream fails its setup without an MQTT entry: leave it out of the 1st boot.
        self.write_config(statestream=False)
        t1 = time.monotonic()
        self._spawn()
        self._wait_http(boot_timeout, "/api/onboarding")
        self.onboard()
        self._wait_running(boot_timeout)
        self.timings["first_boot"] = time.monotonic() - t1
        self.add_mqtt_entry()
        self.write_config(statestream=True)
        t2 = time.monotonic()
        self.restart(boot_timeout)
        self.timings["restart"] = time.monotonic() - t2
        self.assign_areas()
        self.timings["start_total"] = time.monotonic() - t0

    def write_config(self, *, statestream: bool = True) -> None:
        """(Re)write configuration.yaml; it is JSON (JSON is YAML, .venv has no PyYAML)."""
        self.config_dir.mkdir(parents=True, exist_ok=True)
        config: dict[str, Any] = {
            "homeassistant": {
                "name": "Roost test home",
                "latitude": 52.37,
                "longitude": 4.89,
                "elevation": 0,
                "unit_system": "metric",
                "time_zone": "UTC",
                "country": "NL",
                "currency": "EUR",
                "internal_url": f"http://127.0.0.1:{self.port}",
            },
            "logger": {"default": self.log_level},
            "http": {"server_host": ["127.0.0.1"], "server_port": self.port},
            "api": {},
            "websocket_api": {},
            "config": {},
            "recorder": {
                "db_url": f"sqlite:///{self.config_dir / 'home-assistant_v2.db'}",
                "commit_interval": 0,
            },
            "history": {},
            "logbook": {},
            "input_boolean": {
                "kitchen_light": {"name": "Kitchen light", "icon": "mdi:lightbulb"},
                "kitchen_presence": {"name": "Kitchen presence"},
            },
            "input_number": {
                "living_room_temperature": {
                    "name": "Living room temperature",
                    "min": 5,
                    "max": 35,
                    "step": 0.5,
                    "initial": 21,
                    "mode": "box",
                    "unit_of_measurement": "°C",
                }
            },
            "template": [
                {
                    "sensor": [
                        {
                            "name": "Living room temperature",
                            "unique_id": "roost_test_living_room_temperature",
                            "device_class": "temperature",
                            "state_class": "measurement",
                            "unit_of_measurement": "°C",
                            "state": "{{ states('input_number.living_room_temperature') }}",
                        }
                    ],
                    "binary_sensor": [
                        {
                            "name": "Kitchen occupancy",
                            "unique_id": "roost_test_kitchen_occupancy",
                            "device_class": "occupancy",
                            "state": "{{ is_state('input_boolean.kitchen_presence', 'on') }}",
                        }
                    ],
                }
            ],
            **self.extra_config,
        }
        if statestream:
            config["mqtt_statestream"] = {
                "base_topic": self.statestream_base,
                "publish_attributes": True,
                "publish_timestamps": False,
                "include": self.statestream_include,
            }
        (self.config_dir / "configuration.yaml").write_text(
            json.dumps(config, indent=2, ensure_ascii=False) + "\n"
        )

    def _spawn(self) -> None:
        assert self.venv is not None
        argv = [
            str(self.venv / "bin" / "hass"),
            "--config",
            str(self.config_dir),
            "--skip-pip",
            "--log-no-color",
        ]
        with self.log_path.open("ab") as out:
            self.popen = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=_child_env(),
                cwd=self.config_dir,
                start_new_session=True,
            )

    def _check_alive(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            code = None if self.popen is None else self.popen.returncode
            raise HomeAssistantError(f"hass exited ({code}):\n{self.log_tail()}")

    def _wait_http(self, timeout: float, path: str) -> None:
        """Until ``path`` answers 200 (unauthenticated)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                with urllib.request.urlopen(self.url + path, timeout=2):
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.25)
        raise HomeAssistantError(f"{self.url}{path} not answering after {timeout:.0f}s")

    def _wait_running(self, timeout: float) -> None:
        """Until HA has finished starting (``/api/config`` state RUNNING)."""
        deadline = time.monotonic() + timeout
        state = "?"
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                state = self.rest("GET", "/api/config", timeout=2)["state"]
            except (HomeAssistantError, OSError):
                state = "no answer"
            if state == "RUNNING":
                return
            time.sleep(0.25)
        raise HomeAssistantError(f"HA state {state} after {timeout:.0f}s:\n{self.log_tail()}")

    def restart(self, timeout: float = 180) -> None:
        """Stop and start the process (HA's own restart only exits with code 100)."""
        self._terminate()
        self._spawn()
        self._wait_http(timeout, "/api/onboarding")
        self._wait_running(timeout)

    def _terminate(self, timeout: float = 30) -> None:
        popen, self.popen = self.popen, None
        if popen is None or popen.poll() is not None:
            return
        popen.send_signal(signal.SIGTERM)
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(popen.pid, signal.SIGKILL)
            popen.wait()

    def stop(self) -> None:
        self._terminate()

    # ---------------------------------------------------------------- setup steps

    def onboard(self) -> None:
        """Headless owner creation -> auth code -> access token -> long-lived token."""
        created = self.rest(
            "POST",
            "/api/onboarding/users",
            {**OWNER, "client_id": CLIENT_ID, "language": "en"},
            auth=False,
        )
        tokens = self.rest(
            "POST",
            "/auth/token",
            form={
                "grant_type": "authorization_code",
                "code": created["auth_code"],
                "client_id": CLIENT_ID,
            },
            auth=False,
        )
        self.token = tokens["access_token"]
        self.token = self.ws(
            {"type": "auth/long_lived_access_token", "client_name": "roost-tests", "lifespan": 30}
        )

    def add_mqtt_entry(self) -> dict[str, Any]:
        flow = self.rest("POST", "/api/config/config_entries/flow", {"handler": "mqtt"})
        if flow.get("step_id") != "broker":
            raise HomeAssistantError(f"unexpected MQTT flow step: {flow}")
        result: dict[str, Any] = self.rest(
            "POST",
            f"/api/config/config_entries/flow/{flow['flow_id']}",
            {"broker": "127.0.0.1", "port": self.broker_port},
        )
        if result.get("type") != "create_entry":
            raise HomeAssistantError(f"MQTT config entry not created: {result}")
        return result

    def assign_areas(self) -> None:
        """Create the areas that are missing (onboarding made some) and assign entities."""
        existing = {a["name"]: a["area_id"] for a in self.area_registry()}
        missing = sorted(set(self.areas.values()) - set(existing))
        if missing:
            created = self.ws_many(
                [{"type": "config/area_registry/create", "name": n} for n in missing]
            )
            existing |= {a["name"]: a["area_id"] for a in created}
        self.ws_many(
            [
                {
                    "type": "config/entity_registry/update",
                    "entity_id": entity_id,
                    "area_id": existing[area],
                }
                for entity_id, area in self.areas.items()
            ]
        )

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
        deadline = time.monotonic() + timeout
        last: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            last = self.state(entity_id)
            if last is not None and (predicate is None or predicate(last)):
                return last
            time.sleep(0.1)
        raise AssertionError(f"{entity_id} not as expected after {timeout}s; last: {last}")

    def wait_removed(self, entity_id: str, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while self.state(entity_id) is not None:
            if time.monotonic() > deadline:
                raise AssertionError(f"{entity_id} still there after {timeout}s")
            time.sleep(0.1)

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
            env=_child_env(),
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


# -------------------------------------------------------------------- pytest glue


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the Home Assistant tests: {reason}")
    pytest.skip(reason)


def room_sensors(
    rooms: dict[str, str], kinds: dict[str, tuple[str, float, float]], unique_prefix: str
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, str]]:
    """Settable room sensors for tests: per room (slug -> HA area name) and kind
    (device_class -> unit, min, max), an ``input_number.<room>_<kind>_raw`` and a template
    ``sensor.<room>_<kind>`` with that device_class following it, placed in the area.
    Returns (input_number config, template sensors, entity -> area)."""
    numbers: dict[str, Any] = {}
    sensors: list[dict[str, Any]] = []
    areas: dict[str, str] = {}
    for room, area in rooms.items():
        for kind, (unit, lo, hi) in kinds.items():
            key = f"{room}_{kind}_raw"
            numbers[key] = {
                "name": f"{room} {kind} raw",
                "min": lo,
                "max": hi,
                "step": 0.1,
                "initial": lo + 1,
                "mode": "box",
                "unit_of_measurement": unit,
            }
            sensors.append(
                {
                    "name": f"{area} {kind.replace('_', ' ')}",
                    "unique_id": f"{unique_prefix}_{room}_{kind}",
                    "device_class": kind,
                    "state_class": "measurement",
                    "unit_of_measurement": unit,
                    "state": f"{{{{ states('input_number.{key}') }}}}",
                }
            )
            areas[f"sensor.{room}_{kind}"] = area
    return numbers, sensors, areas


def start_home_assistant(home: Path, **kwargs: Any) -> tuple[Stack, HomeAssistant]:
    """A fresh mosquitto (``Stack.start_broker``) and HA against it, under ``home``.

    Skips (outside CI) when mosquitto is missing or the HA venv cannot be built; in CI
    (``CI`` set) fails instead.
    """
    try:
        find_mosquitto()
    except StackError as e:
        _unavailable(str(e))
    try:
        ensure_venv()
    except HomeAssistantUnavailable as e:
        _unavailable(f"Home Assistant {HA_VERSION} venv cannot be built: {e}")
    stack = Stack(home / "stack", hub_id="ha-itest")
    ha: HomeAssistant | None = None
    try:
        port = stack.start_broker()
        ha = HomeAssistant(home / "ha-config", port, **kwargs)
        ha.start()
    except BaseException:
        if ha is not None:
            ha.stop()
        stack.stop()
        raise
    return stack, ha


@contextmanager
def running_home_assistant(home: Path, **kwargs: Any) -> Iterator[HomeAssistant]:
    """``start_home_assistant`` as a context manager; the body of the pytest fixture.

    Use ``ha.broker_port`` for MQTT clients.
    """
    stack, ha = start_home_assistant(home, **kwargs)
    try:
        yield ha
    finally:
        ha.stop()
        stack.stop()
