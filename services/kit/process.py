"""What every Roost process (the services and the hub) sets up once at start-up.

:func:`configure_process` is the one place that configures logging and the GIL
hand-off; :func:`start_metrics` serves Prometheus ``/metrics``;
:func:`write_ready_file` tells the launcher (``cli/stack.py``, k3s probes) that the
process serves, and on which ports.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from prometheus_client import start_http_server

from services.kit.config import ServiceConfig
from services.kit.files import write_atomic

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
SWITCH_INTERVAL_SECONDS = 0.0005


def configure_process(level: str) -> None:
    """Process-wide settings of every Roost process: logging and GIL hand-off.

    Logging goes to stderr at ``level`` in one format. Handlers that an import added to
    the root logger before this call (Opacus adds one) are replaced, so the level and
    format are always ours.

    gRPC's completion-queue poller, onnxruntime and SQLite run in threads beside the
    event loop; with CPython's default 5 ms switch interval, a finished RPC can wait
    that long for the GIL. 0.5 ms keeps hand-offs well under a millisecond.
    """
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, force=True)


def start_metrics(config: ServiceConfig) -> int:
    """Serve Prometheus /metrics (a daemon thread, for the life of the process); returns
    the bound port."""
    httpd, _thread = start_http_server(config.metrics_port, addr=config.metrics_host)
    return int(httpd.server_port)


def write_ready_file(path: Path, **info: Any) -> None:
    """``{"pid": ..., **info}`` at ``path``, atomically (a reader never sees half of it)."""
    write_atomic(path, json.dumps({"pid": os.getpid(), **info}).encode())
