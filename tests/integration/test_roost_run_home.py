"""`roost run` in a home: the broker keeps its port and logins across a restart, and the
simulator never runs (real `roost run` processes: broker, services, hub).

First start with ``--no-simulator``, then again with Home Assistant configured (``ha_url``)
and no flag: both are home mode. ``roost ha setup`` then connects as Home Assistant, with
the printed password, and reads the hub's status ``online`` (so the hub logged in with its
own generated password too).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from cli.broker import CLIENTS
from cli.main import main
from cli.stack import free_port
from hub import mqtt
from tests.support.stacks import require_mosquitto
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def roost_run(home: Path, config: Path, *args: str) -> Iterator[dict[str, Any]]:
    """A `roost run` process until it wrote its stack file; stopped with SIGINT (Ctrl-C)."""
    stack_file = home / "run" / "stack.json"
    stack_file.unlink(missing_ok=True)
    env = {**os.environ, "ROOST_CONFIG": str(config)}
    env.pop("ROOST_HUB_HA_URL", None)
    log = (home.parent / "roost-run.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "--home", str(home), "run", *args],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:

        def started() -> bool:
            assert proc.poll() is None, (home.parent / "roost-run.log").read_text()[-3000:]
            return stack_file.is_file()

        wait_until(started, 240, "roost run to start", interval=0.2)
        yield json.loads(stack_file.read_text())
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def ha_setup(home: Path) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["--home", str(home), "ha", "setup", "--timeout", "20"])
    return code, out.getvalue()


def anonymous_refused(port: int) -> bool:
    async def connect() -> None:
        async with mqtt.client("127.0.0.1", port):
            pass

    try:
        asyncio.run(connect())
    except aiomqtt.MqttError:
        return True
    return False


def test_port_and_logins_are_stable_across_a_restart(tmp_path: Path) -> None:
    require_mosquitto()
    port = free_port()
    config = tmp_path / "roost.toml"
    mqtt_section = f'[mqtt]\nport = {port}\nlisten = ["127.0.0.1"]\n'
    config.write_text(mqtt_section)
    home = tmp_path / "home"

    with roost_run(home, config, "--no-simulator") as stack:
        assert stack["broker"]["mode"] == "home"
        assert stack["broker"]["port"] == port
        assert "simulator" not in stack["processes"]
        code, first = ha_setup(home)
        assert code == 0, first
        assert f"Port       {port}" in first
        assert "as 'homeassistant': connected; hub is online" in first
        assert anonymous_refused(port)

    # Home Assistant configured (HA itself is away): a home without the flag.
    closed = free_port()
    config.write_text(f'[hub]\nha_url = "http://127.0.0.1:{closed}"\n\n' + mqtt_section)
    with roost_run(home, config) as stack:
        assert stack["broker"]["port"] == port
        assert "simulator" not in stack["processes"]
        code, second = ha_setup(home)
        assert code == 0, second
        assert anonymous_refused(port)
    # No password in any log, the stack file or the broker's configuration.
    passwords = [(home / "data" / "mqtt" / "passwords" / c).read_text().strip() for c in CLIENTS]
    written = [
        *(home / "log").glob("*.log"),
        home / "run" / "mosquitto.conf",
        tmp_path / "roost-run.log",
    ]
    for path in written:
        text = path.read_text(errors="replace")
        assert not [p for p in passwords if p in text], path
    # The same password to enter in HA: nothing to re-enter after a restart.
    password = [line for line in first.splitlines() if "Password" in line]
    assert password
    assert password == [line for line in second.splitlines() if "Password" in line]


def test_a_configured_home_refuses_the_simulator(tmp_path: Path) -> None:
    config = tmp_path / "roost.toml"
    config.write_text('[hub]\nha_url = "http://homeassistant.local:8123"\n')
    env = {**os.environ, "ROOST_CONFIG": str(config)}
    argv = [sys.executable, "-m", "cli.main", "--home", str(tmp_path / "home"), "run"]
    done = subprocess.run(
        [*argv, "--speedup", "60"],
        check=False,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "the simulator runs only in demo mode" in done.stderr
    assert not (tmp_path / "home" / "run" / "mosquitto.conf").exists()
