"""The one server interceptor: authorization, metrics and error mapping.

For each RPC it (1) authorizes the caller's role from the verified mTLS peer
certificate, (2) counts the call and its latency by method and status code, and
(3) maps domain errors (``services.kit.errors``) to status codes. Any other
exception is a bug: it is logged with a reference and the caller gets a sanitized
``INTERNAL`` carrying only that reference. Status messages are cut to
``errors.MESSAGE_MAX_CHARS``.

It also wraps every method's request deserializer: bytes that do not decode as the
method's request message become a marker instead of an exception inside grpc (which
would log a traceback and answer ``UNKNOWN``), and the call is refused with
``INVALID_ARGUMENT`` (after authorization, so an unauthorized caller learns nothing
more) and counted in ``roost_grpc_server_undecodable_total``.
"""

from __future__ import annotations

import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Any, Final

import grpc
from grpc import aio
from prometheus_client import Counter, Histogram

from services.kit.auth import Policy, Role, is_allowed, method_name, role_from_common_name
from services.kit.errors import InvalidArgument, RoostError, clip

log = logging.getLogger(__name__)

RPC_HANDLED = Counter(
    "roost_grpc_server_handled_total",
    "RPCs completed, by service, method and status code.",
    ["service", "method", "code"],
)
RPC_LATENCY = Histogram(
    "roost_grpc_server_handling_seconds",
    "RPC handling time, by service and method.",
    ["service", "method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
AUTH_DENIED = Counter(
    "roost_grpc_server_denied_total",
    "RPCs refused because the caller's role may not call them.",
    ["service", "method"],
)
UNDECODABLE = Counter(
    "roost_grpc_server_undecodable_total",
    "Requests refused because their bytes are not a valid request message.",
    ["service", "method"],
)


class _Undecodable:
    """What the wrapped deserializer returns for bytes that are not a valid message."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


Deserializer = Callable[[bytes], Any]
_NOT_A_MESSAGE: Final = "request: the bytes sent are not a valid {} message"


def tolerant_deserializer(deserializer: Deserializer | None) -> Deserializer | None:
    """``deserializer`` returning an ``_Undecodable`` marker instead of raising."""
    if deserializer is None:
        return None
    message_type = getattr(deserializer, "__self__", None)
    descriptor = getattr(message_type, "DESCRIPTOR", None)
    name = getattr(descriptor, "full_name", "request")
    refusal = _NOT_A_MESSAGE.format(name)

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:
            return _Undecodable(refusal)

    return deserialize


def sync_unary_handler(
    behavior: Callable[[Any, grpc.ServicerContext], Any],
    request_deserializer: Deserializer,
    response_serializer: Callable[[Any], bytes],
    *,
    service: str,
    method: str,
) -> grpc.RpcMethodHandler[Any, Any]:
    """A unary handler for a synchronous ``grpc.server`` (the probes' health port) that
    refuses undecodable requests like the interceptor does for the services."""
    deserialize = tolerant_deserializer(request_deserializer)
    counter = UNDECODABLE.labels(service, method)

    def handle(request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, _Undecodable):
            counter.inc()
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        return behavior(request, context)

    return grpc.unary_unary_rpc_method_handler(
        handle, request_deserializer=deserialize, response_serializer=response_serializer
    )


async def _decoded(requests: AsyncIterable[Any], counter: Any) -> AsyncIterator[Any]:
    """A request stream that raises InvalidArgument at the first undecodable message
    (counted in ``counter``, the method's child of UNDECODABLE)."""
    async for request in requests:
        if isinstance(request, _Undecodable):
            counter.inc()
            raise InvalidArgument(request.message)
        yield request


def peer_role(context: aio.ServicerContext[Any, Any]) -> Role | None:
    """The caller's role: the common name of its verified client certificate."""
    auth = context.auth_context()
    names = list(auth.get("x509_common_name") or [])
    if len(names) != 1:
        return None
    return role_from_common_name(names[0].decode("utf-8", "replace"))


def code_of(exc: Exception) -> grpc.StatusCode:
    if isinstance(exc, RoostError):
        return exc.code
    if isinstance(exc, NotImplementedError):
        return grpc.StatusCode.UNIMPLEMENTED
    return grpc.StatusCode.INTERNAL


class KitInterceptor(aio.ServerInterceptor):
    def __init__(self, service: str, policy: Policy) -> None:
        self._service = service
        self._policy = policy

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        full = handler_call_details.method
        deserialize = tolerant_deserializer(handler.request_deserializer)
        serialize = handler.response_serializer
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(full, handler.unary_unary),
                request_deserializer=deserialize,
                response_serializer=serialize,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(full, handler.unary_stream),  # type: ignore[arg-type]
                request_deserializer=deserialize,
                response_serializer=serialize,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap_unary(full, handler.stream_unary, streaming=True),
                request_deserializer=deserialize,
                response_serializer=serialize,
            )
        if handler.stream_stream is not None:  # e.g. server reflection
            return grpc.stream_stream_rpc_method_handler(
                self._wrap_stream(full, handler.stream_stream, streaming=True),  # type: ignore[arg-type]
                request_deserializer=deserialize,
                response_serializer=serialize,
            )
        return handler

    def _refusal(
        self, full: str, request: Any, context: aio.ServicerContext[Any, Any]
    ) -> tuple[grpc.StatusCode, str] | None:
        """Why the call is refused before its handler runs, if it is: the caller's role
        may not call ``full`` (PERMISSION_DENIED), or its request did not decode
        (INVALID_ARGUMENT)."""
        role = peer_role(context)
        if not is_allowed(self._policy, full, role):
            AUTH_DENIED.labels(self._service, method_name(full)).inc()
            who = role.value if role else "an unknown identity"
            return (
                grpc.StatusCode.PERMISSION_DENIED,
                f"{method_name(full)}: role '{who}' is not allowed to call this method",
            )
        if isinstance(request, _Undecodable):
            UNDECODABLE.labels(self._service, method_name(full)).inc()
            return grpc.StatusCode.INVALID_ARGUMENT, request.message
        return None

    async def _fail(
        self, context: aio.ServicerContext[Any, Any], full: str, exc: BaseException
    ) -> grpc.StatusCode:
        if isinstance(exc, RoostError):
            await context.abort(exc.code, clip(str(exc)))
        if isinstance(exc, NotImplementedError):
            await context.abort(
                grpc.StatusCode.UNIMPLEMENTED, f"{method_name(full)}: not implemented"
            )
        ref = uuid.uuid4().hex[:12]
        log.error("internal error in %s (ref %s)", full, ref, exc_info=exc)
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error (ref {ref})")
        return grpc.StatusCode.INTERNAL  # pragma: no cover - abort raises

    def _requests(self, full: str, requests: AsyncIterable[Any]) -> AsyncIterator[Any]:
        return _decoded(requests, UNDECODABLE.labels(self._service, method_name(full)))

    def _record(self, full: str, code: grpc.StatusCode, started: float) -> None:
        method = method_name(full)
        RPC_HANDLED.labels(self._service, method, code.name).inc()
        RPC_LATENCY.labels(self._service, method).observe(time.perf_counter() - started)

    def _wrap_unary(
        self,
        full: str,
        behavior: Callable[[Any, Any], Awaitable[Any]],
        *,
        streaming: bool = False,
    ) -> Callable[[Any, aio.ServicerContext[Any, Any]], Awaitable[Any]]:
        async def handle(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                refused = self._refusal(full, None if streaming else request, context)
                if refused is not None:
                    code = refused[0]
                    await context.abort(*refused)
                if streaming:
                    request = self._requests(full, request)
                return await behavior(request, context)
            except aio.AbortError:
                code = context.code() or code
                if isinstance(code, int):
                    code = grpc.StatusCode.UNKNOWN
                raise
            except Exception as exc:
                code = code_of(exc)
                await self._fail(context, full, exc)
            finally:
                self._record(full, code, started)

        return handle

    def _wrap_stream(
        self,
        full: str,
        behavior: Callable[[Any, Any], AsyncIterator[Any]],
        *,
        streaming: bool = False,
    ) -> Callable[[Any, aio.ServicerContext[Any, Any]], Any]:
        if not inspect.isasyncgenfunction(behavior):
            # A streaming handler that sends with ``context.write()`` (e.g. Health.Watch)
            # is a coroutine, not an async generator: wrap it like a unary one.
            return self._wrap_unary(full, behavior, streaming=streaming)  # type: ignore[arg-type]

        async def handle(
            request: Any, context: aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                refused = self._refusal(full, None if streaming else request, context)
                if refused is not None:
                    code = refused[0]
                    await context.abort(*refused)
                if streaming:
                    request = self._requests(full, request)
                async for item in behavior(request, context):
                    yield item
            except aio.AbortError:
                code = context.code() or code
                raise
            except Exception as exc:
                code = code_of(exc)
                await self._fail(context, full, exc)
            finally:
                self._record(full, code, started)

        return handle
