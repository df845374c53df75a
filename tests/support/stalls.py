"""Stuck event loops for the probe tests: the probes' view of a process, and a test-only
launcher whose SIGUSR1 blocks a real process's event loop.

    python -m tests.support.stalls hub      # runs `python -m hub`, with the hook

On SIGUSR1 the process's main thread (its event loop's) waits, blocked, until the file
named by ``$ROOST_TEST_RELEASE_FILE`` exists: the loop is stuck while every other thread
(gRPC's, /metrics) runs on, as with a blocking call made on the loop by mistake.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
import time
from pathlib import Path
from types import FrameType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cli.stack import free_port as stack_free_port

RELEASE_ENV = "ROOST_TEST_RELEASE_FILE"


def free_port() -> int:
    """A port to bind later: the stack's (below the ephemeral range, so nothing takes it
    in between)."""
    return stack_free_port()


def probe(port: int, service: str, timeout: float = 2.0) -> str:
    """One probe as the kubelet makes it (Check on the plaintext port, a short deadline):
    the status's name, or the error code's (a timeout is ``DEADLINE_EXCEEDED``)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            resp = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as e:
            return str(e.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))


def main() -> None:
    module = sys.argv[1]
    release = Path(os.environ[RELEASE_ENV])

    def stall(signum: int, frame: FrameType | None) -> None:
        while not release.exists():
            time.sleep(0.05)

    signal.signal(signal.SIGUSR1, stall)
    sys.argv = [module]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
