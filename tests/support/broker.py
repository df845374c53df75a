"""A real, throw-away mosquitto for tests that need only the broker.

    with start_mosquitto(tmp_path) as (host, port, proc):
        ...

Started exactly as ``roost run`` starts it (``cli.stack.Stack.start_broker``).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cli.stack import Stack

HOST = "127.0.0.1"


@contextmanager
def start_mosquitto(
    tmp_path: Path, port: int | None = None
) -> Iterator[tuple[str, int, subprocess.Popen[bytes]]]:
    with Stack(tmp_path) as stack:
        bound = stack.start_broker(port or 0)
        yield HOST, bound, stack.procs["mosquitto"].popen
