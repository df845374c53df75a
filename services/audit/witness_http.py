"""The witness's HTTP server: ``POST <prefix>/add-checkpoint`` (C2SP tlog-witness).

A threading stdlib HTTP/1.1 server with keep-alive, a bounded request body and a
per-request timeout; the protocol itself is in ``services.audit.witness``. It is what
``roost audit witness`` runs on a laptop, a second hub or an auditor's machine.
"""

from __future__ import annotations

import logging
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from services.audit.witness import MAX_REQUEST_BYTES, Witness, WitnessError

logger = logging.getLogger(__name__)

PATH = "/add-checkpoint"
_READ_TIMEOUT_SECONDS = 10.0


class WitnessServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], witness: Witness, prefix: str = "") -> None:
        self.witness = witness
        self.path_expected = prefix.rstrip("/") + PATH
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: WitnessServer
    timeout = _READ_TIMEOUT_SECONDS

    def do_POST(self) -> None:
        if self.path != self.server.path_expected:
            self._reply(404, "text/plain", "no such endpoint\n")
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._reply(411, "text/plain", "Content-Length required\n")
            return
        if not 0 <= length <= MAX_REQUEST_BYTES:
            self._reply(413, "text/plain", f"request larger than {MAX_REQUEST_BYTES} bytes\n")
            self.close_connection = True
            return
        body = self.rfile.read(length)
        try:
            lines = self.server.witness.add_checkpoint(body)
        except WitnessError as exc:
            self._reply(exc.status, exc.content_type, exc.body)
            return
        except Exception:
            logger.exception("witness: add-checkpoint failed")
            self._reply(500, "text/plain", "internal error\n")
            return
        self._reply(200, "text/plain; charset=utf-8", lines)

    def do_GET(self) -> None:
        self._reply(405, "text/plain", "use POST\n")

    def _reply(self, status: int, content_type: str, body: str) -> None:
        data = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        logger.debug("witness http: %s", format % args)
