"""The fleet's cloud side: a Flower SuperLink (which starts its own ``flower-superexec``)
and Roost's ServerApp submitted to it with ``flwr run`` (docs/fleet.md).

Used by ``roost fleet serve`` and the fleet integration test, so both run the server the
same way. The SuperLink serves the Fleet, Control and Runtime APIs on one port; no app
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
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from cli.stack import Launch, Stack, StackError, free_port

APP_DIR: Final = Path(__file__).resolve().parents[1] / "fleet" / "app"
CONNECTION: Final = "roost-fleet"
_STARTED = re.compile(r"Successfully started run (\d+)")


def flower_bin(name: str) -> str:
    """A Flower executable of this environment (beside the Python running us)."""
    path = Path(sys.executable).parent / name
    if not path.is_file():
        raise StackError(f"{name} not found beside {sys.executable}: install the 'fleet' extra")
    return str(path)


def flower_path() -> str:
    """$PATH with this environment's bin first: the SuperLink and SuperNode start
    ``flower-superexec``, ``flwr-serverapp`` and ``flwr-clientapp`` by name."""
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    return json.dumps(str(v))  # a TOML basic string


class FleetServer:
    """A SuperLink under ``stack.home`` (logs in log/, Flower's state in run/flwr/)."""

    def __init__(self, stack: Stack, *, port: int = 0) -> None:
        self.stack = stack
        self.port = port or free_port()
        self.flwr_home = stack.home / "run" / "flwr"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> None:
        argv = [
            flower_bin("flower-superlink"),
            "--insecure",
            "--disable-runtime-dependency-installation",
            "--port",
            str(self.port),
            "--database",
            str(self.stack.home / "data" / "superlink.db"),
        ]
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        env = {"FLWR_HOME": str(self.flwr_home), "PATH": flower_path()}
        proc = self.stack._spawn(
            "superlink", Launch(argv, env, ready_port=self.port, detaches_children=True)
        )
        deadline = time.monotonic() + timeout
        while not self.stack.poll_ready("superlink"):
            if not proc.alive():
                raise StackError(f"superlink exited during start-up:\n{proc.log_tail()}")
            if time.monotonic() > deadline:
                raise StackError(f"superlink not ready after {timeout:.0f}s:\n{proc.log_tail()}")
            time.sleep(0.05)
        proc.info = {"port": self.port}

    def submit(self, run_config: Mapping[str, object]) -> str:
        """``flwr run`` the Roost app with ``run_config`` overrides; returns flwr's output."""
        (self.flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            f'[superlink.{CONNECTION}]\naddress = "{self.address}"\ninsecure = true\n'
        )
        overrides = self.stack.home / "run" / "fleet-run-config.toml"
        overrides.write_text("".join(f"{k} = {_toml_value(v)}\n" for k, v in run_config.items()))
        argv = [flower_bin("flwr"), "run", str(APP_DIR), CONNECTION, "--run-config", str(overrides)]
        env = {**os.environ, "FLWR_HOME": str(self.flwr_home), "PATH": flower_path()}
        done = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=120, check=False
        )
        if done.returncode != 0:
            raise StackError(f"flwr run failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done.stdout


def run_id_of(flwr_output: str) -> str:
    """The run id ``flwr run`` printed ("Successfully started run <id>")."""
    found = _STARTED.search(flwr_output)
    if found is None:
        raise StackError(f"flwr run did not say which run it started:\n{flwr_output}")
    return found.group(1)
