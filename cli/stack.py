"""Start and stop a whole local Roost stack: broker, services, hub, simulator.

Used by ``roost run`` (``make run``), the integration tests and the benchmarks, so
all three run the stack the same way: separate processes, real mosquitto, real
gRPC with mTLS, free local ports (services bind port 0 and report the port in a
ready file).

Each child's launch (argv, environment, ready file) is kept, so it can be started again
as it was (:meth:`Stack.respawn`, used by ``cli/supervisor.py``): a service keeps the
port it bound first, so its peers reconnect to it. :meth:`Stack.kill` and
:meth:`Stack.stop_one` take a child out of the stack (it is not restarted).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from cli.broker import HomeBroker, describe_broker, hub_login_env, mosquitto_conf
from cli.prometheus_config import MetricsConfig, find_prometheus, local_config, prometheus_argv
from models.manifest import shipped_models_dir
from services.kit.auth import Role
from services.kit.certs import ensure_certs
from services.kit.files import write_atomic
from services.modelstore.registry import Registry

log = logging.getLogger(__name__)

STACK_FILE = "stack.json"
LOG_TAIL_BYTES = 64 * 1024
MOSQUITTO_HINT = (
    "mosquitto (the MQTT broker) is not installed. On Debian/Ubuntu: "
    "`sudo apt-get install -y mosquitto` (make setup does this); on macOS: "
    "`brew install mosquitto`; elsewhere see https://mosquitto.org/download/"
)


class StackError(RuntimeError):
    """A process of the stack failed to start."""


# Ports handed out for a process to bind LATER come from below the kernel's ephemeral
# range: an outgoing connection or a port-0 bind takes its port from that range, so in
# the seconds before the process binds (personalization's port is named to the update
# service before personalization starts, ~30 s on a loaded machine) nothing else can
# take it. (CI saw "Failed to bind to address 127.0.0.1:44603" when it came from the
# ephemeral range.)
_RESERVED_PORTS_LOW = 20_000
_DEFAULT_EPHEMERAL_LOW = 32_768
_handed_out: set[int] = set()


def ephemeral_low(path: Path = Path("/proc/sys/net/ipv4/ip_local_port_range")) -> int:
    """The lowest port the kernel picks for outgoing connections and port-0 binds."""
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return _DEFAULT_EPHEMERAL_LOW


def free_port() -> int:
    """A loopback TCP port that is free now and that no outgoing connection or port-0
    bind will take before the caller's process binds it (below the ephemeral range;
    never the same port twice in this process). Falls back to a port-0 bind when the
    range below is exhausted or not there."""
    rng = random.SystemRandom()
    high = min(ephemeral_low(), 65_536)
    if high > _RESERVED_PORTS_LOW:
        for _ in range(256):
            port = rng.randrange(_RESERVED_PORTS_LOW, high)
            if port not in _handed_out and _bindable(port):
                _handed_out.add(port)
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def find_mosquitto() -> str:
    for candidate in (
        shutil.which("mosquitto"),
        "/usr/sbin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ):
        if candidate and Path(candidate).is_file():
            return candidate
    raise StackError(MOSQUITTO_HINT)


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def wait_for_port(host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(host, port):
            return
        time.sleep(0.02)
    raise StackError(f"nothing listens on {host}:{port} after {timeout:.0f}s")


def _descendants(pid: int) -> list[Any]:
    import psutil  # noqa: PLC0415 - only for Flower's processes (the fleet extra)

    try:
        return list(psutil.Process(pid).children(recursive=True))
    except psutil.NoSuchProcess:
        return []


def _terminate(procs: list[Any], timeout: float = 5) -> None:
    """SIGTERM, then SIGKILL what is left after ``timeout`` (psutil processes)."""
    if not procs:
        return
    import psutil  # noqa: PLC0415

    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


@dataclass(frozen=True)
class Launch:
    """How a child was started, to start it again the same way."""

    argv: list[str]
    env: dict[str, str]
    # Ready once the child wrote this file (services, hub) or this port accepts
    # connections (mosquitto); with neither, at once (the simulator).
    ready_file: Path | None = None
    ready_port: int | None = None
    # The loopback address ``ready_port`` is checked on (a SuperLink may listen on another).
    ready_host: str = "127.0.0.1"
    # A clean exit (code 0) ends the child for good (the simulator's replay is done).
    done_on_success: bool = False
    # It starts children in their own sessions (Flower's SuperLink and SuperNode start
    # flower-superexec, which starts flwr-serverapp/-clientapp): stopping it stops them.
    detaches_children: bool = False


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    info: dict[str, Any] = field(default_factory=dict)
    # Where this run's lines begin in the log (it is appended to across restarts).
    log_start: int = 0
    # As a supervisor sees it ("running", "restarting", "crash loop", ...), for stack.json.
    state: str = "running"
    detail: str = ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` this run of the process logged (not an earlier run's)."""
        try:
            with self.log_path.open("rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(self.log_start, size - LOG_TAIL_BYTES))
                text = f.read().decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class Stack:
    """Processes of one local stack, under ``home`` (certs/, data/, run/, log/)."""

    def __init__(self, home: Path, *, hub_id: str = "local", log_level: str = "INFO") -> None:
        self.home = home.resolve()
        self.hub_id = hub_id
        self.log_level = log_level
        self.procs: dict[str, Proc] = {}
        self.launches: dict[str, Launch] = {}
        # Ports chosen before a service starts, because a peer started earlier names it.
        self._reserved: dict[Role, int] = {}
        self.broker_port = 0
        self.broker_home: HomeBroker | None = None
        for sub in ("certs", "data", "run", "log"):
            (self.home / sub).mkdir(parents=True, exist_ok=True)
        ensure_certs(self.certs_dir, hub_id)

    @property
    def certs_dir(self) -> Path:
        return self.home / "certs"

    def _spawn(self, name: str, launch: Launch) -> Proc:
        log_path = self.home / "log" / f"{name}.log"
        if launch.ready_file is not None:
            launch.ready_file.unlink(missing_ok=True)
        out: IO[bytes] = log_path.open("ab")
        log_start = out.tell()  # before the child shares (and moves) the file offset
        full_env = {**os.environ, **launch.env, "PYTHONUNBUFFERED": "1"}
        popen = subprocess.Popen(
            launch.argv, stdout=out, stderr=subprocess.STDOUT, env=full_env, start_new_session=True
        )
        proc = Proc(name, popen, log_path, log_start=log_start)
        out.close()
        self.procs[name] = proc
        self.launches[name] = launch
        return proc

    def respawn(self, name: str) -> Proc:
        """Start ``name`` again as it was last launched; does not wait (see :meth:`poll_ready`).
        Until it is ready, it keeps its last ready info (a service's port does not change)."""
        last = self.procs.get(name)
        proc = self._spawn(name, self.launches[name])
        proc.info = dict(last.info) if last is not None else {}
        return proc

    def poll_ready(self, name: str) -> bool:
        """Whether ``name`` serves yet, without waiting; records its ready info if so."""
        proc, launch = self.procs[name], self.launches[name]
        if launch.ready_file is not None:
            if not launch.ready_file.is_file():
                return False
            proc.info = json.loads(launch.ready_file.read_text())
            return True
        return launch.ready_port is None or port_open(launch.ready_host, launch.ready_port)

    def start_all(
        self,
        mqtt_port: int = 0,
        update_env: Mapping[str, str] | None = None,
        home_broker: HomeBroker | None = None,
    ) -> None:
        """The broker, the four services and the hub, in the order `roost run` starts them
        (each waits for its peers' ports); on a failure, everything started is stopped.
        ``update_env`` configures the update service (e.g. its model repository);
        ``home_broker`` makes the broker a home's (see cli/broker.py)."""
        try:
            self.start_broker(mqtt_port, home_broker)
            for role in (Role.AUDIT, Role.INFERENCE, Role.UPDATE):
                self.start_service(role, update_env if role == Role.UPDATE else None)
            # It imports torch: over 30 s on a loaded 2-core machine.
            self.start_service(Role.PERSONALIZATION, timeout=90)
            self.start_hub()
        except BaseException:
            self.stop()
            raise

    def start_broker(self, port: int = 0, home: HomeBroker | None = None) -> int:
        """Mosquitto in demo mode (127.0.0.1, ``port`` or a free one, anonymous) or, with
        ``home``, as a home's broker (``port`` or the configured one, passwords, ACLs)."""
        binary = find_mosquitto()
        self.broker_home = home
        if home is not None:
            self.broker_port = port or home.config.port
            if port_open("127.0.0.1", self.broker_port):
                raise StackError(
                    f"port {self.broker_port} is in use (another MQTT broker?): stop it, or "
                    "set another port in [mqtt] of the configuration"
                )
            home.prepare()
        else:
            self.broker_port = port or free_port()
        conf = self.home / "run" / "mosquitto.conf"
        conf.write_text(mosquitto_conf(self.broker_port, self.home / "run", home))
        proc = self._spawn(
            "mosquitto", Launch([binary, "-c", str(conf)], {}, ready_port=self.broker_port)
        )
        deadline = time.monotonic() + 10
        while not port_open("127.0.0.1", self.broker_port):
            if not proc.alive() or time.monotonic() > deadline:
                raise StackError(
                    f"mosquitto does not listen on port {self.broker_port}:\n{proc.log_tail()}"
                )
            time.sleep(0.02)
        return self.broker_port

    def _ready_file(self, name: str) -> Path:
        return self.home / "run" / f"{name}.ready.json"

    def _wait_ready(self, proc: Proc, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.poll_ready(proc.name):
                return proc.info
            if not proc.alive():
                raise StackError(f"{proc.name} exited during start-up:\n{proc.log_tail()}")
            time.sleep(0.02)
        raise StackError(f"{proc.name} not ready after {timeout:.0f}s:\n{proc.log_tail()}")

    def start_service(
        self, role: Role, extra_env: Mapping[str, str] | None = None, timeout: float = 30
    ) -> dict[str, Any]:
        """Start ``python -m services.<role>``; returns its ready info (port, metrics_port).
        The port it binds first is kept: a restart (or a later start) of the role reuses it."""
        name = role.value
        prefix = f"ROOST_{name.upper()}_"
        ready = self._ready_file(name)
        env = {
            prefix + "PORT": str(self._reserved.get(role, 0)),
            prefix + "METRICS_PORT": "0",
            prefix + "CERTS_DIR": str(self.certs_dir),
            prefix + "DATA_DIR": str(self.home / "data" / name),
            prefix + "READY_FILE": str(ready),
            prefix + "LOG_LEVEL": self.log_level,
            prefix + "HUB_ID": self.hub_id,
            **self._peer_env(role),
            **(extra_env or {}),
        }
        if role == Role.INFERENCE and prefix + "REGISTRY_ROOT" not in (extra_env or {}):
            self.bootstrap_models()
        proc = self._spawn(name, Launch([sys.executable, "-m", f"services.{name}"], env, ready))
        info = self._wait_ready(proc, timeout)
        # Reserve the ports for restarts, so peers (and Prometheus) find it again.
        self._reserved[role] = int(info["port"])
        self.launches[name].env[prefix + "PORT"] = str(info["port"])
        self.launches[name].env[prefix + "METRICS_PORT"] = str(info["metrics_port"])
        return info

    def bootstrap_models(self) -> list[str]:
        """Install and activate the shipped models the stack's model store lacks.

        Inference only reads the store and the update service is its writer; a stack
        may run inference without update (tests, `roost serve`), so the launcher puts
        the shipped models in first. Idempotent, and safe beside a running update
        service (writers take the store's per-model lock)."""
        return Registry(self.models_dir).bootstrap(shipped_models_dir())

    @property
    def models_dir(self) -> Path:
        """The model registry: the update service writes it, inference serves from it."""
        return self.home / "data" / "models"

    def _peer_env(self, role: Role) -> dict[str, str]:
        """Registry location and peer addresses of the services that need them."""
        prefix = f"ROOST_{role.value.upper()}_"
        env: dict[str, str] = {}
        if role in (Role.INFERENCE, Role.UPDATE, Role.PERSONALIZATION):
            env[prefix + "REGISTRY_ROOT"] = str(self.models_dir)
        if role in (Role.UPDATE, Role.PERSONALIZATION):
            for peer in (Role.AUDIT, Role.INFERENCE, Role.UPDATE):
                if peer != role and peer.value in self.procs:
                    env[f"{prefix}{peer.value.upper()}_TARGET"] = f"127.0.0.1:{self.port_of(peer)}"
        if role == Role.UPDATE:
            # Update and personalization call each other: personalization's port is
            # picked now, so the update service started first can already name it.
            if Role.PERSONALIZATION.value in self.procs:
                port = self.port_of(Role.PERSONALIZATION)
            else:
                port = self._reserved.setdefault(Role.PERSONALIZATION, free_port())
            env[prefix + "PERSONALIZATION_TARGET"] = f"127.0.0.1:{port}"
        return env

    def start_hub(self, extra_env: Mapping[str, str] | None = None) -> dict[str, Any]:
        ready = self._ready_file("hub")
        env = {
            "ROOST_HUB_HUB_ID": self.hub_id,
            "ROOST_HUB_MQTT_PORT": str(self.broker_port),
            "ROOST_HUB_INFERENCE_TARGET": f"127.0.0.1:{self.port_of(Role.INFERENCE)}",
            "ROOST_HUB_AUDIT_TARGET": f"127.0.0.1:{self.port_of(Role.AUDIT)}",
            "ROOST_HUB_CERTS_DIR": str(self.certs_dir),
            "ROOST_HUB_METRICS_PORT": "0",
            "ROOST_HUB_READY_FILE": str(ready),
            "ROOST_HUB_LOG_LEVEL": self.log_level,
            "ROOST_HUB_DATA_DIR": str(self.home / "data" / "hub"),
            **hub_login_env(self.broker_home),
            **{
                f"ROOST_HUB_{role.value.upper()}_TARGET": f"127.0.0.1:{self.port_of(role)}"
                for role in (Role.PERSONALIZATION, Role.UPDATE)
                if role.value in self.procs
            },
            **(extra_env or {}),
        }
        proc = self._spawn("hub", Launch([sys.executable, "-m", "hub"], env, ready))
        info = self._wait_ready(proc, 30)
        self.launches["hub"].env["ROOST_HUB_METRICS_PORT"] = str(info["metrics_port"])
        return info

    def start_prometheus(self, cfg: MetricsConfig, timeout: float = 30) -> dict[str, Any]:
        """Metrics sync: a Prometheus on 127.0.0.1 that scrapes every Roost process
        started so far and remote-writes the allow-listed series (cli/prometheus_config.py).
        Its configuration and TSDB live in run/prometheus/."""
        try:
            binary = find_prometheus(cfg.binary)
        except FileNotFoundError as e:
            raise StackError(str(e)) from e
        port = cfg.port or free_port()
        targets = {
            name: int(p.info["metrics_port"])
            for name, p in self.procs.items()
            if "metrics_port" in p.info
        }
        config = self.home / "run" / "prometheus" / "prometheus.yml"
        config.parent.mkdir(exist_ok=True)
        doc = local_config(cfg, hub_id=self.hub_id, targets=targets, self_port=port)
        write_atomic(config, json.dumps(doc, indent=2).encode())
        launch = Launch(prometheus_argv(binary, cfg, config, port), {}, ready_port=port)
        proc = self._spawn("prometheus", launch)
        deadline = time.monotonic() + timeout
        while not self.poll_ready("prometheus"):
            if not proc.alive():
                raise StackError(f"prometheus exited during start-up:\n{proc.log_tail()}")
            if time.monotonic() > deadline:
                raise StackError(f"prometheus not ready after {timeout:.0f}s:\n{proc.log_tail()}")
            time.sleep(0.05)
        proc.info = {"http_port": port, "remote_write": doc["remote_write"][0]["url"]}
        return proc.info

    def start_simulator(self, speedup: float, areas: str = "office") -> Proc:
        if self.broker_home is not None:
            raise StackError("the simulator runs only in demo mode, never on a home's broker")
        argv = [
            sys.executable,
            "-m",
            "cli.simulate",
            "--port",
            str(self.broker_port),
            "--speedup",
            str(speedup),
            "--areas",
            areas,
        ]
        return self._spawn("simulator", Launch(argv, {}, done_on_success=True))

    def port_of(self, role: Role) -> int:
        return int(self.procs[role.value].info["port"])

    def describe(self) -> dict[str, Any]:
        """What `roost status` and `roost tail` need; written to run/stack.json."""
        return {
            "hub_id": self.hub_id,
            "certs_dir": str(self.certs_dir),
            "broker": describe_broker(self.broker_port, self.broker_home),
            "processes": {
                name: {
                    **p.info,
                    "pid": p.popen.pid,
                    "log": str(p.log_path),
                    "state": p.state,
                    **({"detail": p.detail} if p.detail else {}),
                }
                for name, p in self.procs.items()
            },
        }

    def write_stack_file(self) -> Path:
        """Write run/stack.json atomically: `roost status` never reads half of it."""
        path = self.home / "run" / STACK_FILE
        write_atomic(path, json.dumps(self.describe(), indent=2).encode())
        return path

    def stop_one(self, name: str, timeout: float = 15) -> int | None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return None
        launch = self.launches.get(name)
        orphans = _descendants(proc.popen.pid) if launch and launch.detaches_children else []
        if proc.alive():
            proc.popen.send_signal(signal.SIGTERM)
            try:
                proc.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0fs; killing it", name, timeout)
                proc.popen.kill()
                proc.popen.wait()
        _terminate(orphans)
        return proc.popen.returncode

    def kill(self, name: str) -> None:
        """SIGKILL one process (crash tests); children it detached are SIGKILLed too."""
        proc = self.procs.pop(name)
        launch = self.launches.get(name)
        orphans = _descendants(proc.popen.pid) if launch and launch.detaches_children else []
        proc.popen.kill()
        proc.popen.wait()
        _terminate(orphans, timeout=0)

    def stop(self) -> None:
        """Stop in reverse dependency order: simulator, hub, services, broker."""
        for name in (
            "simulator",
            "prometheus",
            "supernode",
            "hub",
            "update",
            "personalization",
            "inference",
            "audit",
        ):
            self.stop_one(name)
        for name in list(self.procs):
            self.stop_one(name)
        (self.home / "run" / STACK_FILE).unlink(missing_ok=True)

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
