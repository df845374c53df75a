"""The probes see a stuck event loop in a real process (the hub, a service): liveness
NOT_SERVING while the loop is blocked, though /metrics (what the hub's probe used to read)
still answers from its own thread; SERVING again once the loop runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.kit.certs import ensure_certs
from services.kit.watchdog import LIVENESS
from tests.support.stalls import RELEASE_ENV, free_port, probe
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def process_env(role: str, home: Path, health_port: int, metrics_port: int) -> dict[str, str]:
    """The process configured as `roost run` would, plus the probes' port and a 2 s stall
    limit. The hub's peers are absent: it waits for inference with its loop running."""
    prefix = f"ROOST_{role.upper()}_"
    env = {
        prefix + "CERTS_DIR": str(home / "certs"),
        prefix + "DATA_DIR": str(home / "data" / role),
        prefix + "METRICS_PORT": str(metrics_port),
        prefix + "HEALTH_PORT": str(health_port),
        prefix + "LOOP_STALL_SECONDS": "2",
        RELEASE_ENV: str(home / "release"),
        "PYTHONUNBUFFERED": "1",
    }
    if role == "hub":
        env[prefix + "INFERENCE_TARGET"] = f"127.0.0.1:{free_port()}"
        env[prefix + "AUDIT_TARGET"] = f"127.0.0.1:{free_port()}"
        env[prefix + "MQTT_PORT"] = str(free_port())
    return env


@pytest.fixture(params=["hub", "audit"])
def stalling(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Path, int, int]]:
    """A real hub or audit process whose loop SIGUSR1 blocks; (release file, health port,
    metrics port)."""
    role: str = request.param
    ensure_certs(tmp_path / "certs")
    health_port, metrics_port = free_port(), free_port()
    module = "hub" if role == "hub" else f"services.{role}"
    with (tmp_path / f"{role}.log").open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.stalls", module],
            env={**os.environ, **process_env(role, tmp_path, health_port, metrics_port)},
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(
            lambda: probe(health_port, LIVENESS) == "SERVING" or proc.poll() is not None,
            30,
            f"{role}'s probe port",
        )
        assert proc.poll() is None, (tmp_path / f"{role}.log").read_text()
        proc.send_signal(signal.SIGUSR1)
        yield tmp_path / "release", health_port, metrics_port
    finally:
        (tmp_path / "release").touch()
        proc.terminate()
        proc.wait(20)


def metrics_answer(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
        return r.status == 200


def test_a_stuck_loop_fails_liveness_until_it_runs_again(
    stalling: tuple[Path, int, int],
) -> None:
    release, health_port, metrics_port = stalling
    wait_until(
        lambda: probe(health_port, LIVENESS) == "NOT_SERVING",
        15,
        "liveness NOT_SERVING while the loop is stuck",
    )
    assert probe(health_port, "") == "NOT_SERVING"  # not ready either
    assert metrics_answer(metrics_port)  # the process's threads are alive
    release.touch()
    wait_until(lambda: probe(health_port, LIVENESS) == "SERVING", 15, "liveness SERVING again")
    assert probe(health_port, "") == "SERVING"
