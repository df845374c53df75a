"""Unary calls carried over one long-lived bidirectional stream, both ends.

A unary gRPC call in Python costs far more CPU than the message it carries: a new
HTTP/2 stream, headers, trailers and a handful of completion-queue events on each
side. The hub's decision path makes two calls per batch, and at 200 readings/s each
batch is one reading. ``PredictBatchStream`` and ``AppendDecisionsStream`` carry the
same requests over one stream per peer instead: each request gets exactly one reply,
in request order, holding either the response or the status code and message the
unary call would have ended with.

- :func:`ordered_replies` (server): handles up to ``max_in_flight`` requests of a
  stream at once (an audit append waits for a group commit; concurrent ones share it)
  and replies in request order. A domain error (:mod:`services.kit.errors`) becomes
  that request's error reply and the stream goes on; anything else is a bug, logged
  with a reference and answered ``INTERNAL``. Each request is counted in the same
  metrics as a unary call, under the unary method's name.
- :class:`StreamedCalls` (client): ``await calls(request, timeout=...)`` behaves like
  the unary stub method: it returns the response or raises ``grpc.aio.AioRpcError``
  with the refusal's code. The stream is opened on first use (waiting for the channel
  to be ready) and again after it breaks. The first write on a stream waits for the
  server to accept it (the initial metadata :func:`ordered_replies` sends, marked
  ``roost-stream: accepted``; a refusal comes with none), so a
  refused stream reports the server's status (``PERMISSION_DENIED``), not the
  ``INTERNAL`` grpc.aio gives a write that races the refusal (grpc/grpc#36066); a
  write that fails mid-stream is reported ``UNAVAILABLE``: the request never went
  out, and the peer is gone. A break (peer down, restarted) fails every
  request waiting on it with the stream's status (``UNAVAILABLE``, ...), and a request
  that times out fails with ``DEADLINE_EXCEEDED`` and resets the stream, so the
  caller's retries see exactly the outcomes unary calls gave them.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Any, Generic, TypeVar

import grpc
from grpc import aio

from roost.common.v1 import common_pb2
from services.kit.errors import clip
from services.kit.interceptors import RPC_HANDLED, RPC_LATENCY, code_of

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Reply = TypeVar("Reply")

_CODES = {c.value[0]: c for c in grpc.StatusCode}
# The initial metadata of an accepted stream. A refused one has none: its status comes
# alone ("trailers only"), so the client tells them apart without racing the status.
_ACCEPTED_KEY, _ACCEPTED = "roost-stream", "accepted"
ACCEPTED = ((_ACCEPTED_KEY, _ACCEPTED),)
# What grpc.aio says of a write on a stream that has just ended (grpc/grpc#36066).
_CORE_WRITE_FAILURE = "Internal error from Core"
# Requests of one stream a server handles at once (its reader waits beyond that).
MAX_IN_FLIGHT = 16


def status_code(number: int) -> grpc.StatusCode:
    """The status code with this number (``UNKNOWN`` for a number gRPC does not know)."""
    return _CODES.get(number, grpc.StatusCode.UNKNOWN)


async def ordered_replies(
    requests: AsyncIterable[Req],
    handle: Callable[[Req], Awaitable[Resp]],
    reply: Callable[..., Reply],
    *,
    context: aio.ServicerContext[Any, Any],
    service: str,
    method: str,
    max_in_flight: int = MAX_IN_FLIGHT,
) -> AsyncIterator[Reply]:
    """``reply(response=...)`` or ``reply(error=CallStatus)`` for each request, in order.

    First it sends the stream's initial metadata: the stream is accepted, and the
    client (:class:`StreamedCalls`) may write."""
    await context.send_initial_metadata(ACCEPTED)
    handled_ok = RPC_HANDLED.labels(service, method, grpc.StatusCode.OK.name)  # looked up once
    latency = RPC_LATENCY.labels(service, method)

    async def one(request: Req) -> Reply:
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            return reply(response=await handle(request))
        except Exception as exc:
            code = code_of(exc)
            if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
                ref = uuid.uuid4().hex[:12]
                log.error("internal error in %s/%s (ref %s)", service, method, ref, exc_info=exc)
                text = f"internal error (ref {ref})"
            else:
                text = clip(str(exc)) or f"{method}: {code.name.lower()}"
            return reply(error=common_pb2.CallStatus(code=code.value[0], message=text))
        finally:
            ok = code == grpc.StatusCode.OK
            (handled_ok if ok else RPC_HANDLED.labels(service, method, code.name)).inc()
            latency.observe(time.perf_counter() - started)

    queue: asyncio.Queue[asyncio.Task[Reply] | None] = asyncio.Queue(max_in_flight)

    async def read() -> None:
        try:
            async for request in requests:
                await queue.put(asyncio.create_task(one(request)))
        except asyncio.CancelledError:
            raise  # the replies' side is gone: nobody waits for the end marker
        except BaseException:
            await queue.put(None)  # the writer re-raises it from ``await reader``
            raise
        await queue.put(None)

    reader = asyncio.create_task(read())
    try:
        while (task := await queue.get()) is not None:
            yield await task
        await reader  # the request stream's own failure (e.g. undecodable bytes), if any
    finally:
        reader.cancel()
        while not queue.empty():
            left = queue.get_nowait()
            if left is not None:
                left.cancel()


class StreamedCalls(Generic[Req, Resp]):
    """Unary calls of one method, over one stream of ``open_stream`` at a time; each
    request goes out as ``wrap(request)`` (the stream's own request message)."""

    def __init__(
        self, open_stream: Callable[..., Any], name: str, wrap: Callable[[Req], Any]
    ) -> None:
        self._open_stream = open_stream
        self._wrap = wrap  # the unary request into the stream's request message
        self._name = name  # for error details: "PredictBatchStream"
        self._call: Any = None
        self._waiting: deque[asyncio.Future[Any]] = deque()
        self._reader: asyncio.Task[None] | None = None
        self._accepted = False  # the server accepted the current stream
        self._write_lock = asyncio.Lock()

    async def __call__(self, request: Req, *, timeout: float | None = None) -> Resp:  # noqa: ASYNC109 - the unary stub's
        """The response to ``request``, or ``AioRpcError`` as the unary call would raise."""
        try:
            async with asyncio.timeout(timeout):
                reply = await self._send(request)
        except TimeoutError:
            # The peer is stuck or the channel not ready: start over on a fresh stream.
            self.reset()
            raise _error(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"{self._name}: no reply within {timeout:g} s"
            ) from None
        return self._unwrap(reply)

    async def _send(self, request: Req) -> Any:
        async with self._write_lock:  # one write at a time: replies come in write order
            call, waiting = self._current()
            answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            waiting.append(answer)
            try:
                if not self._accepted:
                    metadata = await call.initial_metadata()  # accepted, or refused
                    self._accepted = metadata.get(_ACCEPTED_KEY) == _ACCEPTED
                if self._accepted:
                    await call.write(self._wrap(request))
                # else: refused (or not a stream of ordered_replies): the reader fails
                # ``answer`` with the stream's status once it ends, or the timeout does
            except BaseException as e:
                # A write on a stream that broke (its reader may already have said how),
                # or cancelled half-way: nothing more can go on this stream.
                self._broken(call, waiting, _write_error(e, self._name))
                if isinstance(e, asyncio.CancelledError):
                    raise
        return await answer

    def _unwrap(self, reply: Any) -> Resp:
        which = reply.WhichOneof("result")
        if which == "response":
            response: Resp = reply.response
            return response
        if which == "error":
            return_code = status_code(reply.error.code)
            raise _error(return_code, reply.error.message)
        raise _error(grpc.StatusCode.INTERNAL, f"{self._name}: a reply with no result")

    def _current(self) -> tuple[Any, deque[asyncio.Future[Any]]]:
        if self._call is None or self._call.done():
            self._call = self._open_stream(wait_for_ready=True)
            self._accepted = False
            self._waiting = deque()
            self._reader = asyncio.create_task(self._read(self._call, self._waiting))
        return self._call, self._waiting

    async def _read(self, call: Any, waiting: deque[asyncio.Future[Any]]) -> None:
        error: aio.AioRpcError
        try:
            async for reply in call:
                if not waiting:
                    error = _error(grpc.StatusCode.INTERNAL, f"{self._name}: a reply to nothing")
                    break
                answer = waiting.popleft()
                if not answer.done():
                    answer.set_result(reply)
            else:
                error = _error(grpc.StatusCode.UNAVAILABLE, f"{self._name}: the stream ended")
        except aio.AioRpcError as e:
            error = e
        except asyncio.CancelledError:
            error = _error(grpc.StatusCode.CANCELLED, f"{self._name}: the stream was closed")
        self._broken(call, waiting, error)

    def _broken(self, call: Any, waiting: deque[asyncio.Future[Any]], error: Exception) -> None:
        """Every request still waiting on ``call`` fails with ``error``; the next opens anew."""
        if self._call is call:
            self._call = None
        call.cancel()
        while waiting:
            answer = waiting.popleft()
            if not answer.done():
                answer.set_exception(error)

    def reset(self) -> None:
        """Abandon the current stream (its waiting requests fail ``CANCELLED``)."""
        if self._call is not None:
            self._broken(
                self._call,
                self._waiting,
                _error(grpc.StatusCode.CANCELLED, f"{self._name}: the stream was reset"),
            )

    async def close(self) -> None:
        self.reset()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)


def _write_error(e: BaseException, name: str) -> aio.AioRpcError:
    """What a failed write reports. grpc.aio says ``INTERNAL`` ("Internal error from
    Core") for a write on a stream that has just ended, hiding the stream's status
    (grpc/grpc#36066): the request never went out and the peer is gone, which callers
    wait out as ``UNAVAILABLE``; a real status from the peer is kept."""
    if isinstance(e, aio.AioRpcError) and not (
        e.code() == grpc.StatusCode.INTERNAL and e.details() == _CORE_WRITE_FAILURE
    ):
        return e
    return _error(grpc.StatusCode.UNAVAILABLE, f"{name}: the stream ended under a write")


def _error(code: grpc.StatusCode, details: str) -> aio.AioRpcError:
    return aio.AioRpcError(code, aio.Metadata(), aio.Metadata(), details=details)
