"""The k3s fleet component's SuperNode command line, run by the real flower-supernode: it
starts with exactly the rendered args (only the pod's addresses and paths moved onto
loopback and a temporary directory) and its health port answers the kubelet's gRPC
probe. The ClientApp's rounds with a real SuperLink: tests/integration/test_fleet_flower.py
(the same command line, from ``roost run``)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cli.fleet_server import flower_bin, flower_env
from cli.stack import free_port
from services.kit.certs import ensure_certs
from tests.support.k3s import find_kubectl, named, overlay_copy, plain_env, pod_spec, render
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


def _serving(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        try:
            resp = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=2
            )
        except grpc.RpcError:
            return False
    return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)


def test_the_rendered_supernode_starts_and_answers_its_probe(tmp_path: Path) -> None:
    (tmp_path / "overlay").mkdir()
    objs = render(find_kubectl(), overlay_copy(tmp_path / "overlay", "edge", "fleet"))
    container = pod_spec(named(objs, "Deployment", "roost-supernode"))["containers"][0]
    env = plain_env(container)
    probe = container["livenessProbe"]["grpc"]["port"]
    assert container["readinessProbe"]["grpc"]["port"] == probe
    # The pod's values, moved: the CA file, nothing listening at the SuperLink's address
    # (the probe must not depend on it), loopback ports.
    ensure_certs(tmp_path / "certs")
    health, runtime = free_port(), free_port()
    env["ROOST_FLEET_ROOT_CERTIFICATES"] = str(tmp_path / "certs" / "ca.pem")
    env["ROOST_FLEET_SUPERLINK"] = f"127.0.0.1:{free_port()}"
    args = [re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], a) for a in container["args"]]
    args = [
        a.replace(f"0.0.0.0:{probe}", f"127.0.0.1:{health}") if "0.0.0.0" in a else a for a in args
    ]
    args[args.index("--port") + 1] = str(runtime)
    assert container["command"] == ["flower-supernode"]
    log = (tmp_path / "supernode.log").open("wb")
    proc = subprocess.Popen(
        [flower_bin("flower-supernode"), *args],
        env={**os.environ, **flower_env(tmp_path / "flwr")},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until(
            lambda: proc.poll() is not None or _serving(health),
            90,
            "the SuperNode's health port answers SERVING",
        )
        assert proc.poll() is None, (tmp_path / "supernode.log").read_text()[-3000:]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
