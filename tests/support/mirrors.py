"""A real HTTP mirror of a TUF repository directory that can misbehave on chosen files:
drip them (one byte every ``drip_seconds``) or send endless data for them."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class Mirror:
    """What the mirror does; changed by the test while it runs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.drip: re.Pattern[str] | None = None  # paths sent one byte at a time
        self.endless: re.Pattern[str] | None = None  # paths answered with endless zeros
        self.drip_seconds = 2.0
        self.endless_cap = 64 << 20  # an honest test server stops somewhere
        self.sent = 0  # bytes sent for misbehaving paths
        self.stop = threading.Event()
        self.url = ""


class _Handler(SimpleHTTPRequestHandler):
    mirror: Mirror

    def __init__(self, *args: Any, mirror: Mirror, **kw: Any) -> None:
        self.mirror = mirror
        super().__init__(*args, directory=str(mirror.root), **kw)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        m = self.mirror
        if m.endless is not None and m.endless.search(self.path):
            self._endless()
        elif m.drip is not None and m.drip.search(self.path):
            self._drip()
        else:
            super().do_GET()

    def _endless(self) -> None:
        m = self.mirror
        self.send_response(200)
        self.end_headers()
        block = b"\0" * (1 << 16)
        try:
            while m.sent < m.endless_cap and not m.stop.is_set():
                self.wfile.write(block)
                m.sent += len(block)
        except OSError:
            pass  # the client hung up: what a guarded client does

    def _drip(self) -> None:
        m = self.mirror
        path = Path(self.translate_path(self.path))
        data = path.read_bytes() if path.is_file() else b"{}" * 1000
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            for i in range(len(data)):
                self.wfile.write(data[i : i + 1])
                self.wfile.flush()
                m.sent += 1
                if m.stop.wait(m.drip_seconds):
                    return
        except OSError:
            pass


@contextmanager
def serve_mirror(root: Path) -> Iterator[Mirror]:
    """A mirror of ``root`` on a free local port (``mirror.url``) until the block ends."""
    mirror = Mirror(root)
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, mirror=mirror))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    mirror.url = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        yield mirror
    finally:
        mirror.stop.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
