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

:func:`publish_all` publishes many QoS 1 messages at once straight through paho, each
confirmed by its PUBACK. aiomqtt's ``publish`` costs time in proportion to the calls
already pending (it scans them, twice, for every new one), and paho's in-flight window
scans every message in flight on each PUBACK; with the hundreds of decisions the hub
publishes at once after a restart, both grew quadratic (367 µs per decision in a
2,048-decision burst; 74 µs this way, real mosquitto). The hub's clients therefore set
no in-flight window (``max_inflight_messages=0``: paho sends at once; the broker is the
one that bounds its queue) and confirm through a dictionary of futures keyed by message
id.

Reading, paho asks the socket for one byte (the packet type), then one per length byte,
then the rest: three system calls per message, and aiomqtt reads one packet each time
the event loop sees the socket readable. :class:`BufferedSocket` (every client here
reads through one) takes what the kernel holds in one call and serves paho from it; its
``pending()`` makes aiomqtt's read callback go on until the buffer is used up (the loop
it runs for TLS sockets). Reading a 20,000-message backlog: 80 -> 38 µs per message.

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
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, cast

import aiomqtt
import paho.mqtt.client as paho_mqtt

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


class BufferedSocket:
    """A connected socket (plain or TLS) read in chunks of :data:`READ_CHUNK` bytes;
    everything but ``recv`` and ``pending`` goes to the socket itself."""

    READ_CHUNK = 256 * 1024

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0

    def recv(self, bufsize: int) -> bytes:
        if self._pos >= len(self._buf):
            data: bytes = self._sock.recv(self.READ_CHUNK)  # BlockingIOError: nothing yet
            if not data:
                return data  # closed
            self._buf, self._pos = data, 0
        end = self._pos + bufsize
        out = self._buf[self._pos : end]
        self._pos = end
        return out

    def pending(self) -> int:
        """Bytes read but not yet handed out (for TLS, also the decrypted ones waiting
        in the TLS layer)."""
        tls = self._sock.pending() if hasattr(self._sock, "pending") else 0
        return max(0, len(self._buf) - self._pos) + tls

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _read_buffered(c: aiomqtt.Client) -> None:
    """Each socket ``c`` opens is read through a :class:`BufferedSocket`."""
    paho = c._client
    opened = paho.on_socket_open

    def on_socket_open(client: Any, userdata: Any, sock: Any) -> None:
        buffered = BufferedSocket(sock)
        client._sock = buffered  # paho reads and writes through its _sock
        if opened is not None:
            opened(client, userdata, buffered)

    paho.on_socket_open = on_socket_open


# With no in-flight window (0) nothing waits in the client: warn only at a real pile-up.
UNLIMITED_PENDING_WARNING = 10_000


def client(host: str, port: int, **kwargs: Any) -> aiomqtt.Client:
    kwargs.setdefault("logger", CLIENT_LOG)
    c = aiomqtt.Client(host, port, socket_options=SOCKET_OPTIONS, **kwargs)
    _read_buffered(c)
    inflight = kwargs.get("max_inflight_messages")
    c.pending_calls_threshold = (
        UNLIMITED_PENDING_WARNING if inflight == 0 else inflight or PAHO_MAX_INFLIGHT
    )
    return c


_CONFIRMATIONS = "_roost_confirmations"


class _Confirmations:
    """The futures of one client's :func:`publish_all` messages awaiting their PUBACK, by
    message id. Chains paho's ``on_publish`` (aiomqtt's own publishes still go to
    aiomqtt) and fails what is left when a session of the client drops."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.waiting: dict[int, asyncio.Future[None]] = {}
        self._watched: asyncio.Future[None] | None = None
        paho = client._client
        self._aiomqtt_on_publish: Any = paho.on_publish  # aiomqtt's (paho's v2 signature)
        paho.on_publish = self._on_publish

    def watch(self, client: aiomqtt.Client) -> None:
        """Fail the waits when the client's current session drops (aiomqtt makes a new
        disconnect future for each session of a reused client)."""
        session: asyncio.Future[None] = client._disconnected
        if session is not self._watched:
            self._watched = session
            session.add_done_callback(self._dropped)

    def _on_publish(self, c: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        fut = self.waiting.pop(mid, None)
        if fut is None:
            if self._aiomqtt_on_publish is not None:
                self._aiomqtt_on_publish(c, userdata, mid, reason, properties)
        elif not fut.done():
            fut.set_result(None)

    def _dropped(self, _: object) -> None:
        for fut in self.waiting.values():
            if not fut.done():
                fut.set_exception(aiomqtt.MqttError("Disconnected before the broker confirmed"))
        self.waiting.clear()


def _confirmations(client: aiomqtt.Client) -> _Confirmations:
    confirms: _Confirmations | None = getattr(client, _CONFIRMATIONS, None)
    if confirms is None:
        confirms = _Confirmations(client)
        setattr(client, _CONFIRMATIONS, confirms)
    confirms.watch(client)
    return confirms


async def publish_all(
    client: aiomqtt.Client, messages: Sequence[tuple[str, bytes]]
) -> list[BaseException | None]:
    """Publish ``(topic, payload)`` messages at QoS 1, in order; per message, None once
    the broker confirmed it (PUBACK), else the error. Cancelling abandons the waits
    (the messages may still reach the broker). The client must be connected, in this
    event loop; it works best with ``max_inflight_messages=0`` (see the module doc)."""
    waiting = _confirmations(client).waiting
    paho = client._client
    loop = asyncio.get_running_loop()
    results: list[BaseException | None] = [None] * len(messages)
    waits: list[tuple[int, asyncio.Future[None]]] = []
    for i, (topic, payload) in enumerate(messages):
        info = paho.publish(topic, payload, qos=1)
        if info.rc != paho_mqtt.MQTT_ERR_SUCCESS:
            results[i] = aiomqtt.MqttCodeError(info.rc, "Could not publish message")
        elif not info.is_published():
            fut = waiting[info.mid] = loop.create_future()
            waits.append((i, fut))
    if waits:
        done = await asyncio.gather(*(f for _, f in waits), return_exceptions=True)
        for (i, _), outcome in zip(waits, done, strict=True):
            results[i] = outcome if isinstance(outcome, BaseException) else None
    return results


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
