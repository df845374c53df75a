"""A real, throw-away mosquitto for integration tests.

    with start_mosquitto(tmp_path) as (host, port, proc):
        ...

Tests should skip when ``mosquitto_available()`` is False ("run make setup").
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HOST = "127.0.0.1"
SKIP_REASON = "mosquitto not installed; run make setup"


def mosquitto_available() -> bool:
    return shutil.which("mosquitto") is not None


def free_port(host: str = HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@contextmanager
def start_mosquitto(
    tmp_path: Path, port: int | None = None, *, ready_timeout: float = 5.0
) -> Iterator[tuple[str, int, subprocess.Popen[bytes]]]:
    """Run ``mosquitto -c <conf>`` on ``port`` (a free one if None) until the block exits.

    Waits (at most ``ready_timeout`` s) until the port accepts connections; raises
    RuntimeError with the broker's log if it does not come up.
    """
    exe = shutil.which("mosquitto")
    if exe is None:
        raise RuntimeError(SKIP_REASON)
    port = free_port() if port is None else port
    tmp_path.mkdir(parents=True, exist_ok=True)
    conf = tmp_path / f"mosquitto-{port}.conf"
    log = tmp_path / f"mosquitto-{port}.log"
    conf.write_text(
        f"listener {port} {HOST}\nallow_anonymous true\npersistence false\nlog_dest stderr\n"
    )
    with log.open("wb") as log_file:
        proc = subprocess.Popen([exe, "-c", str(conf)], stdout=log_file, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + ready_timeout
        while not _accepts(HOST, port):
            if proc.poll() is not None or time.monotonic() > deadline:
                _stop(proc)
                raise RuntimeError(
                    f"mosquitto did not start on {HOST}:{port}: "
                    f"{log.read_text(errors='replace')[-2000:]}"
                )
            time.sleep(0.05)
        yield HOST, port, proc
    finally:
        _stop(proc)
