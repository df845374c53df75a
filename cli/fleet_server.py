"""The fleet's cloud side: a Flower SuperLink (which starts its own ``flower-superexec``)
and Roost's ServerApp submitted to it with ``flwr run`` (docs/fleet.md).

Used by ``roost fleet serve`` and the fleet integration test, so both run the server the
same way. The SuperLink serves the Fleet, Control and Runtime APIs on one port, over TLS
unless told ``insecure``: with the operator's certificate, or one this module issues from
the server stack's own CA (``certs/superlink.pem``; hubs trust ``certs/ca.pem``). No app
dependency is installed at run time (the ServerApp and ClientApp are modules of this
repository, importable from the environment).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Final

from cryptography.x509 import ExtensionNotFound

from cli.stack import Launch, Stack, StackError, free_port
from services.kit.certs import TlsFiles, ensure_leaf, leaf_names

APP_DIR: Final = Path(__file__).resolve().parents[1] / "fleet" / "app"
CONNECTION: Final = "roost-fleet"
_STARTED = re.compile(r"Successfully started run (\d+)")
# The SuperLink's certificate in the server stack's certs/ (superlink.pem, superlink-key.pem).
CERT_STEM: Final = "superlink"
ANY_ADDRESS: Final = "0.0.0.0"


def flower_bin(name: str) -> str:
    """A Flower executable of this environment (beside the Python running us)."""
    path = Path(sys.executable).parent / name
    if not path.is_file():
        raise StackError(f"{name} not found beside {sys.executable}: install the 'fleet' extra")
    return str(path)


def flower_env(flwr_home: Path) -> dict[str, str]:
    """The environment of every Flower process Roost starts (SuperLink, SuperNode, the
    ``flwr`` CLI; their SuperExec, ServerApp and ClientApp children inherit it).

    $PATH with this environment's bin first (they start ``flower-superexec``,
    ``flwr-serverapp`` and ``flwr-clientapp`` by name), and Flower's telemetry and update
    check off: otherwise each SuperNode and SuperLink posts an event (a random cluster id,
    the platform, the CPU count) to telemetry.flower.ai and asks Flower's API for a newer
    version, connections a hub's ``[fleet]`` never named (tests/integration/
    test_egress_fleet_metrics.py)."""
    return {
        "FLWR_HOME": str(flwr_home),
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
    }


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    return json.dumps(str(v))  # a TOML basic string


class FleetServer:
    """A SuperLink under ``stack.home`` (logs in log/, Flower's state in run/flwr/),
    listening on ``host:port`` (``0.0.0.0``: every interface).

    TLS by default: ``tls`` (the operator's certificate, key and CA), or else a
    certificate from the stack's CA for ``host``, ``names`` (the addresses and host names
    hubs connect to), localhost and 127.0.0.1. ``insecure``: plain HTTP (tests only)."""

    def __init__(
        self,
        stack: Stack,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        names: Iterable[str] = (),
        tls: TlsFiles | None = None,
        insecure: bool = False,
        database: str = "",
    ) -> None:
        self.stack = stack
        # Flower's link state: a SQLite file under data/ by default; ":flwr-in-memory:"
        # keeps it in the process (lost on restart; the fleet bench uses it).
        self.database = database or str(stack.home / "data" / "superlink.db")
        self.port = port or free_port()
        self.host = host
        self.flwr_home = stack.home / "run" / "flwr"
        self.tls: TlsFiles | None = None
        if not insecure:
            own = {"localhost", self.local_host, *names}
            self.tls = tls or ensure_leaf(stack.certs_dir, CERT_STEM, own)
            _check_names(self.tls.cert, self.local_host)

    @property
    def local_host(self) -> str:
        """The address this machine's Flower processes (its SuperExec, ``flwr run``)
        connect to: the listened one, or 127.0.0.1 when listening on every interface."""
        return "127.0.0.1" if self.host == ANY_ADDRESS else self.host

    @property
    def address(self) -> str:
        return f"{self.local_host}:{self.port}"

    def _tls_args(self) -> list[str]:
        if self.tls is None:
            return ["--insecure"]
        return [
            "--ssl-ca-certfile",
            str(self.tls.ca),
            "--ssl-certfile",
            str(self.tls.cert),
            "--ssl-keyfile",
            str(self.tls.key),
        ]

    def start(self, timeout: float = 60) -> None:
        argv = [
            flower_bin("flower-superlink"),
            *self._tls_args(),
            "--disable-runtime-dependency-installation",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--database",
            self.database,
        ]
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        env = flower_env(self.flwr_home)
        launch = Launch(
            argv, env, ready_port=self.port, ready_host=self.local_host, detaches_children=True
        )
        proc = self.stack._spawn("superlink", launch)
        deadline = time.monotonic() + timeout
        while not self.stack.poll_ready("superlink"):
            if not proc.alive():
                raise StackError(f"superlink exited during start-up:\n{proc.log_tail()}")
            if time.monotonic() > deadline:
                raise StackError(f"superlink not ready after {timeout:.0f}s:\n{proc.log_tail()}")
            time.sleep(0.05)
        proc.info = {"port": self.port, "host": self.host, "tls": self.tls is not None}

    def flwr(self, *args: str, timeout: float = 120) -> str:
        """The ``flwr`` CLI against this SuperLink (the connection in its FLWR_HOME, over
        TLS trusting its CA unless insecure); returns its output."""
        tls = (
            "insecure = true\n"
            if self.tls is None
            else f"root-certificates = {_toml_value(self.tls.ca)}\n"
        )
        (self.flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            f'[superlink.{CONNECTION}]\naddress = "{self.address}"\n{tls}'
        )
        env = {**os.environ, **flower_env(self.flwr_home)}
        done = subprocess.run(
            [flower_bin("flwr"), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise StackError(
                f"flwr {args[0]} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
            )
        return done.stdout

    def submit(self, run_config: Mapping[str, object], app_dir: Path = APP_DIR) -> str:
        """``flwr run`` the Roost app (or another, e.g. the bench's) with ``run_config``
        overrides; returns flwr's output."""
        overrides = self.stack.home / "run" / "fleet-run-config.toml"
        overrides.write_text("".join(f"{k} = {_toml_value(v)}\n" for k, v in run_config.items()))
        return self.flwr("run", str(app_dir), CONNECTION, "--run-config", str(overrides))


def _check_names(cert: Path, host: str) -> None:
    """The SuperLink's own SuperExec connects to ``host``: its certificate must name it."""
    try:
        names = leaf_names(cert)
    except (ExtensionNotFound, ValueError, OSError) as e:
        raise StackError(
            f"{cert}: no readable certificate with subject alternative names: {e}"
        ) from e
    if host not in names:
        raise StackError(
            f"{cert} is not valid for {host} (it names {', '.join(sorted(names))}): the "
            "SuperLink's own processes connect there; issue it for that address too"
        )


def run_id_of(flwr_output: str) -> str:
    """The run id ``flwr run`` printed ("Successfully started run <id>")."""
    found = _STARTED.search(flwr_output)
    if found is None:
        raise StackError(f"flwr run did not say which run it started:\n{flwr_output}")
    return found.group(1)
