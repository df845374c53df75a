"""The one way Roost opens an MQTT connection (hub, simulator, CLI, tests, bench).

paho-mqtt does not disable Nagle's algorithm; with small messages and QoS 1 that
adds delayed-ACK stalls of tens of milliseconds, so every client sets TCP_NODELAY.

aiomqtt warns "There are N pending publish calls" whenever more than 10 calls wait for
the broker. The hub publishes each batch of decisions at once (QoS 1), so that was one
warning per decision on the normal path. Here a client warns only when more calls wait than
it may have in flight (``max_inflight_messages``, paho's 20 unless given): the rest queue in
the client, a real backlog. The warnings and errors of aiomqtt and paho go through one
:class:`~services.kit.ratelog.RateLimitedLog` (at most one line per message per minute);
their debug lines are left alone.

:func:`incoming` reads a client's messages like ``client.messages`` without the task and
``asyncio.wait`` aiomqtt's iterator creates for every message (a third of the hub's cost
of taking a reading in its profile).

:func:`quiet_socket_races` keeps a race of aiomqtt's out of the log: it registers the
socket with the event loop through ``call_soon_threadsafe``, so when the connection drops
just then, ``add_writer`` meets a closed descriptor and asyncio logs a traceback ("Bad
file descriptor") although the reconnect goes on as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import aiomqtt

from services.kit.ratelog import RateLimitedLog

SOCKET_OPTIONS = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)
# paho's default in-flight window (QoS > 0 messages on the wire at once).
PAHO_MAX_INFLIGHT = 20

log = logging.getLogger(__name__)
# The logger every client hands to aiomqtt (which hands it to paho).
CLIENT_LOG = logging.getLogger(f"{__name__}.client")


class RateLimitFilter(logging.Filter):
    """Logs the libraries' warnings and errors through rate-limited logs, per message
    template and level, and drops the originals; lower levels pass."""

    def __init__(self, warnings: RateLimitedLog, errors: RateLimitedLog) -> None:
        super().__init__()
        self._warnings = warnings
        self._errors = errors

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        limited = self._errors if record.levelno >= logging.ERROR else self._warnings
        args = record.args if isinstance(record.args, tuple) else (record.args,)
        limited(str(record.msg), str(record.msg), *(args if record.args else ()))
        return False


CLIENT_LOG.addFilter(
    RateLimitFilter(RateLimitedLog(log, logging.WARNING), RateLimitedLog(log, logging.ERROR))
)


_SOCKET_REGISTRATIONS = frozenset({"add_reader", "add_writer", "remove_reader", "remove_writer"})


def _closed_socket_registration(context: dict[str, Any]) -> bool:
    """A loop callback that (un)registered a socket aiomqtt had already seen closed."""
    exc = context.get("exception")
    callback = getattr(context.get("handle"), "_callback", None)
    if getattr(callback, "__name__", "") not in _SOCKET_REGISTRATIONS:
        return False
    if isinstance(exc, OSError):
        return exc.errno == errno.EBADF
    return isinstance(exc, ValueError) and "file descriptor" in str(exc)


def quiet_socket_races(loop: asyncio.AbstractEventLoop) -> None:
    """Log aiomqtt's closed-socket registrations at DEBUG; everything else as before."""
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if _closed_socket_registration(context):
            log.debug("MQTT: the socket closed before it was registered (reconnecting)")
        elif previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


def client(host: str, port: int, **kwargs: Any) -> aiomqtt.Client:
    kwargs.setdefault("logger", CLIENT_LOG)
    c = aiomqtt.Client(host, port, socket_options=SOCKET_OPTIONS, **kwargs)
    c.pending_calls_threshold = kwargs.get("max_inflight_messages") or PAHO_MAX_INFLIGHT
    return c


def broker_login(
    username: str, password_file: Path | None, tls_ca_file: Path | None
) -> dict[str, Any]:
    """aiomqtt.Client arguments for the hub's broker login and TLS (none: anonymous). The
    password is read from its file at each call, so a changed password is used on the
    next connect."""
    kwargs: dict[str, Any] = {}
    if username:
        kwargs["username"] = username
        if password_file is not None:
            kwargs["password"] = password_file.read_text().strip()
    if tls_ca_file is not None:
        kwargs["tls_params"] = aiomqtt.TLSParameters(ca_certs=str(tls_ca_file))
    return kwargs


_DISCONNECTED = object()


async def incoming(client: aiomqtt.Client) -> AsyncIterator[aiomqtt.Message]:
    """The messages of a connected ``client``, in order, as ``client.messages`` yields
    them; raises :class:`aiomqtt.MqttError` once the session dropped and the messages
    received before are handed out (as ``client.messages`` does).

    One ``await queue.get()`` per message; the drop wakes it through a marker that a
    callback of aiomqtt's disconnect future appends to the queue. Reads aiomqtt's
    private queue and future (aiomqtt 2.x; a test pins the behaviour)."""
    queue = cast("asyncio.Queue[object]", client._queue)
    disconnected = client._disconnected

    def wake(_: object) -> None:
        # A full queue: the reader is busy with it, and sees the drop once it is empty.
        with contextlib.suppress(asyncio.QueueFull):
            queue.put_nowait(_DISCONNECTED)

    disconnected.add_done_callback(wake)
    try:
        while True:
            if queue.empty() and disconnected.done():
                break
            message = await queue.get()
            if message is _DISCONNECTED:  # after every message received before the drop
                break
            yield cast("aiomqtt.Message", message)
    finally:
        disconnected.remove_done_callback(wake)
    error = disconnected.exception() if not disconnected.cancelled() else None
    raise aiomqtt.MqttError("Disconnected during message iteration") from error
