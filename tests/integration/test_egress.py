"""Nothing leaves the hub: the whole stack, traced, in a network with only loopback.

The broker, the four services, the hub and the simulator run through a DP training job
(whose child process loads onnxruntime too) and a TUF update served on loopback, under
``strace -f -e trace=network`` in a new network namespace whose only interface is ``lo``
(:mod:`tests.support.egress`). Any connect or send to a non-loopback address, and any
DNS query, fails the test; the namespace makes sure nothing leaves while it looks.

The control shows the trap works: onnxruntime imported the plain way (not through
``models.onnx_runtime``) looks up its telemetry host within the same window.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.support.egress import outbound_attempts, require_tracing, scrubbed_env, traced

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
LINGER_SECONDS = 20.0  # onnxruntime 1.31's uploader looked up its host ~10 s after start

TELEMETRY_ON = """
import time
import onnxruntime
from pathlib import Path
path = next(Path(%r).rglob("*.onnx"))
onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
time.sleep(%r)
"""


def test_the_parser_flags_what_leaves_and_dns() -> None:
    trace = "\n".join(
        [
            '10 connect(7, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("10.0.0.53")}, 16) = -1',
            '11 connect(8, {sa_family=AF_INET, sin_port=htons(443), sin_addr=inet_addr("20.42.65.92")}, 16 <unfinished ...>',
            '12 sendto(9, "x", 1, 0, {sa_family=AF_INET6, sin6_port=htons(443), sin6_flowinfo=htonl(0), inet_pton(AF_INET6, "2603:1030::1", &sin6_addr), sin6_scope_id=0}, 28) = 1',
            '13 connect(5, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("127.0.0.53")}, 16) = 0',
            '14 connect(5, {sa_family=AF_INET, sin_port=htons(1883), sin_addr=inet_addr("127.0.0.1")}, 16) = 0',
            '15 connect(5, {sa_family=AF_INET6, sin6_port=htons(8080), sin6_flowinfo=htonl(0), inet_pton(AF_INET6, "::1", &sin6_addr), sin6_scope_id=0}, 28) = 0',
            '16 connect(5, {sa_family=AF_INET6, sin6_port=htons(80), sin6_flowinfo=htonl(0), inet_pton(AF_INET6, "::ffff:127.0.0.1", &sin6_addr), sin6_scope_id=0}, 28) = 0',
            '17 connect(3, {sa_family=AF_UNIX, sun_path="/run/x"}, 110) = 0',
            '18 bind(5, {sa_family=AF_INET, sin_port=htons(0), sin_addr=inet_addr("0.0.0.0")}, 16) = 0',
        ]
    )
    flagged = [line.split()[0] for line in outbound_attempts(trace)]
    assert flagged == ["10", "11", "12", "13"]


def test_the_trap_catches_onnxruntime_telemetry(tmp_path: Path) -> None:
    require_tracing()
    out = tmp_path / "trace.txt"
    script = TELEMETRY_ON % (str(ROOT / "models" / "artifacts"), LINGER_SECONDS)
    run = traced([sys.executable, "-c", script], out, scrubbed_env(), timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    attempts = outbound_attempts(out.read_text())
    assert attempts, "telemetry on, yet the tracer saw no lookup: the trap does not work"


def test_a_training_job_and_an_update_send_nothing_off_the_hub(tmp_path: Path) -> None:
    require_tracing()
    out = tmp_path / "trace.txt"
    argv = [sys.executable, "-m", "tests.support.egress_driver", str(tmp_path)]
    run = traced([*argv, "--linger", str(LINGER_SECONDS)], out, scrubbed_env(), timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    did = json.loads(run.stdout.strip().splitlines()[-1])
    assert did["job"] == "JOB_STATE_SUCCEEDED", did
    assert did["offered"] == ["occupancy 1.1.0"], did
    assert did["audited"] > 0, did
    trace = out.read_text()
    assert "connect(" in trace, "the tracer saw no network call at all"
    assert outbound_attempts(trace) == []
