"""Probes that see a stuck event loop: a heartbeat the loop stamps, read by a health-only
gRPC server that runs on its own threads.

A Roost process can look alive while its asyncio event loop is stuck (a blocking call
on the loop, a runaway computation): the /metrics thread still answers and gRPC still
accepts connections. Nothing on the loop can report that, so :class:`LoopWatchdog` has
the loop stamp a heartbeat (every second at most) and :class:`ProbeServer`, the plaintext
``grpc.health.v1`` port the kubelet probes (``health_port``), answers from gRPC's thread
pool, not from the loop:

- ``liveness``: SERVING while the heartbeat is at most ``stall_seconds`` old, NOT_SERVING
  once it is older. It ignores graceful stops: a draining process is alive.
- ``""`` and every service name (readiness): the status the process set (NOT_SERVING
  from the start of a graceful stop), and NOT_SERVING while the loop is stalled.

A stall is logged (at most once a minute) with where the loop's thread is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2

from services.kit.interceptors import sync_unary_handler
from services.kit.ratelog import RateLimitedLog

log = logging.getLogger(__name__)

# The health service name the liveness probes ask for (k3s: grpc.service: liveness).
LIVENESS = "liveness"
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
HEARTBEAT_SECONDS = 1.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class LoopWatchdog:
    """The heartbeat of one event loop; :meth:`stalled` may be asked from any thread."""

    def __init__(
        self, stall_seconds: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not stall_seconds > 0:
            raise ValueError(f"stall_seconds must be > 0, got {stall_seconds}")
        self.stall_seconds = stall_seconds
        # Several beats fit in the stall limit, so a running loop is never mistaken for a
        # stalled one between two beats.
        self.interval = min(HEARTBEAT_SECONDS, stall_seconds / 4)
        self._clock = clock
        self._beat = clock()
        self._thread_id: int | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start beating on the running loop (call from a coroutine on it)."""
        self._thread_id = threading.get_ident()
        self._beat = self._clock()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-watchdog")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            self._beat = self._clock()
            await asyncio.sleep(self.interval)

    def age(self) -> float:
        """Seconds since the loop last ran the heartbeat."""
        return self._clock() - self._beat

    def stalled(self) -> bool:
        return self.age() > self.stall_seconds

    def where(self, depth: int = 4) -> str:
        """Where the loop's thread is now, innermost call first (``fn (file:line) < ...``),
        for the stall log."""
        frame = sys._current_frames().get(self._thread_id or -1)
        if frame is None:
            return "unknown"
        calls = traceback.extract_stack(frame, limit=depth)
        return " < ".join(f"{c.name} ({Path(c.filename).name}:{c.lineno})" for c in calls[::-1])


class ProbeHealth:
    """``grpc.health.v1`` Check for probes, answered on gRPC's threads (see the module).
    Only Check: a Watch stream would hold one of the port's two threads for its life."""

    def __init__(self, watchdog: LoopWatchdog) -> None:
        self._watchdog = watchdog
        self._lock = threading.Lock()
        self._status: dict[str, health_pb2.HealthCheckResponse.ServingStatus.ValueType] = {}
        self._stall_log = RateLimitedLog(log)

    def set(self, service: str, serving: bool) -> None:
        with self._lock:
            self._status[service] = SERVING if serving else NOT_SERVING

    def shutdown(self) -> None:
        """A graceful stop began: every readiness status NOT_SERVING (liveness unchanged)."""
        with self._lock:
            for service in self._status:
                self._status[service] = NOT_SERVING

    def check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        alive = not self._watchdog.stalled()
        if not alive:
            with self._lock:
                self._stall_log(
                    "loop_stalled",
                    "event loop stalled for %.1fs (at %s): liveness NOT_SERVING",
                    self._watchdog.age(),
                    self._watchdog.where(),
                )
        if request.service == LIVENESS:
            return health_pb2.HealthCheckResponse(status=SERVING if alive else NOT_SERVING)
        with self._lock:
            status = self._status.get(request.service)
        if status is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        return health_pb2.HealthCheckResponse(status=status if alive else NOT_SERVING)


class ProbeServer:
    """The plaintext, health-only gRPC port for probes, on a small thread pool."""

    def __init__(self, watchdog: LoopWatchdog, host: str, port: int) -> None:
        self.health = ProbeHealth(watchdog)
        self._address = f"{host}:{port}"
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="probe"),
            # Refuse a port another process holds (gRPC shares it by default).
            options=[("grpc.so_reuseport", 0)],
            maximum_concurrent_rpcs=8,
        )
        check = sync_unary_handler(
            self.health.check,
            health_pb2.HealthCheckRequest.FromString,
            health_pb2.HealthCheckResponse.SerializeToString,
            service="probe",
            method="Check",
        )
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(HEALTH_SERVICE, {"Check": check}),)
        )
        self.port = 0

    def start(self) -> int:
        """Bind and serve; returns the bound port (``OSError`` if it cannot bind)."""
        try:
            self.port = self._server.add_insecure_port(self._address)
        except RuntimeError as e:  # grpcio raises this rather than returning 0
            raise OSError(f"cannot bind health port {self._address}") from e
        if self.port == 0:
            raise OSError(f"cannot bind health port {self._address}")
        self._server.start()
        return self.port

    def stop(self) -> None:
        self._server.stop(0).wait()
