"""With fleet learning and metrics sync on, the hub reaches exactly two places.

The same traced, loopback-only namespace as ``test_egress.py``, with ``[fleet] enabled``
(a real SuperLink over TLS, on 127.0.0.2) and ``[metrics] remote_write_url`` (a real
Prometheus receiving remote writes, on 127.0.0.3): the stack's own services are on
127.0.0.1, so every connect or send elsewhere must go to exactly the SuperLink's or the
receiver's address and port. Anything else, another 127.x address or another port on
theirs included, and any DNS query, fails the test. Both paths must have carried
something: the receiver holds the hub's series, the SuperLink lists its SuperNode.

The controls show the check can fail: a grandchild process connecting to 127.0.0.9 (or
to the SuperLink's address on another port) is flagged, and Flower's telemetry, which its
SuperLink and SuperNode send unless told not to, is caught by the trap.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from cli.fleet_server import flower_bin, flower_env
from tests.support.egress import (
    outbound_attempts,
    reached,
    require_tracing,
    scrubbed_env,
    traced,
    unexpected_destinations,
)
from tests.support.prometheus import require_prometheus

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

LINGER_SECONDS = 20.0

# Listens where the stack, the SuperLink and the receiver would, then has a grandchild
# (as deep in the tree as a service's training job) connect to each of STRAY_TARGETS.
STRAY = """
import socket, subprocess, sys
from tests.support.egress import bring_loopback_up
bring_loopback_up()
listeners = []
for host, port in [("127.0.0.1", 7000), ("127.0.0.2", 9093), ("127.0.0.3", 9090)]:
    s = socket.socket()
    s.bind((host, port))
    s.listen()
    listeners.append(s)
middle = "import subprocess, sys; subprocess.run([sys.executable, sys.argv[1]], check=True)"
subprocess.run([sys.executable, "-c", middle, sys.argv[1]], check=True)
"""
GRANDCHILD = """
import socket
for target in %r:
    socket.socket().connect_ex(target)
"""
STRAY_TARGETS = [
    ("127.0.0.1", 7000),  # the stack's own
    ("127.0.0.2", 9093),  # the SuperLink
    ("127.0.0.3", 9090),  # the receiver
    ("127.0.0.9", 80),  # anything else on loopback: caught
    ("127.0.0.2", 9094),  # the SuperLink's address, another port: caught
]

FLOWER_TELEMETRY = textwrap.dedent(
    """
    from flwr.supercore.telemetry import EventType, event
    print(event(EventType.RUN_SUPERNODE_ENTER).result(timeout=90))
    """
)


def test_the_check_flags_a_stray_connect_from_a_grandchild(tmp_path: Path) -> None:
    require_tracing()
    out = tmp_path / "trace.txt"
    grandchild = tmp_path / "grandchild.py"
    grandchild.write_text(GRANDCHILD % (STRAY_TARGETS,))
    run = traced([sys.executable, "-c", STRAY, str(grandchild)], out, scrubbed_env(), 120)
    assert run.returncode == 0, run.stderr[-2000:]
    trace = out.read_text()
    assert all(reached(trace, a, p) for a, p in STRAY_TARGETS), trace
    flagged = unexpected_destinations(trace, [("127.0.0.2", 9093), ("127.0.0.3", 9090)])
    assert len(flagged) == 2, flagged
    assert '"127.0.0.9"' in flagged[0]
    assert "htons(9094)" in flagged[1]
    # The plain loopback check lets all of them through: the stricter one is needed.
    assert outbound_attempts(trace) == []


def test_the_trap_catches_flower_telemetry_and_the_fleet_env_turns_it_off(
    tmp_path: Path,
) -> None:
    require_tracing()
    env = scrubbed_env()
    on = traced([sys.executable, "-c", FLOWER_TELEMETRY], tmp_path / "on.txt", env, 120)
    assert on.returncode == 0, on.stderr[-2000:]
    assert outbound_attempts((tmp_path / "on.txt").read_text()), "no lookup: the trap is blind"
    off_env = {**env, **flower_env(tmp_path / "flwr")}
    off = traced([sys.executable, "-c", FLOWER_TELEMETRY], tmp_path / "off.txt", off_env, 120)
    assert off.returncode == 0, off.stderr[-2000:]
    assert off.stdout.strip() == "disabled"
    assert outbound_attempts((tmp_path / "off.txt").read_text()) == []


def test_with_fleet_and_metrics_sync_only_the_superlink_and_the_receiver_are_reached(
    tmp_path: Path,
) -> None:
    require_tracing()
    require_prometheus()
    flower_bin("flower-superlink")  # the fleet extra
    out = tmp_path / "trace.txt"
    argv = [sys.executable, "-m", "tests.support.egress_driver", str(tmp_path), "--remote"]
    run = traced([*argv, "--linger", str(LINGER_SECONDS)], out, scrubbed_env(), timeout=800)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    did = json.loads(run.stdout.strip().splitlines()[-1])
    assert did["job"] == "JOB_STATE_SUCCEEDED", did
    assert did["offered"] == ["occupancy 1.1.0"], did
    assert did["remote_write_series"] > 0, did
    assert did["supernodes_online"] == 1, did
    allowed = [(str(a), int(p)) for a, p in did["allowed"]]
    assert [a for a, _ in allowed] == ["127.0.0.2", "127.0.0.3"]
    trace = out.read_text()
    assert all(reached(trace, a, p) for a, p in allowed), allowed
    assert unexpected_destinations(trace, allowed) == []
