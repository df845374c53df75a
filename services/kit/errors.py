"""Domain errors of every Roost service: one shallow hierarchy.

Services raise these; the error-mapping interceptor (``services.kit.interceptors``)
turns them into gRPC status codes at the edge. Anything else that escapes a handler
is a bug and becomes a sanitized ``INTERNAL``. Messages must be actionable and must
never contain household values (readings, features): name the field, not its value.
When a message must echo what the caller sent (a model name, a page token), it goes
through :func:`echo`, which quotes it and cuts it short.
"""

from __future__ import annotations

import grpc

# Characters of caller input an error message may echo (see ``echo``), and of a whole
# status message (the interceptor cuts longer ones).
ECHO_MAX_CHARS = 40
MESSAGE_MAX_CHARS = 1000


def echo(value: object, limit: int = ECHO_MAX_CHARS) -> str:
    """``value`` quoted for an error message, cut to ``limit`` characters with a note of
    its full length, so a caller's 3 MB string never comes back in a status message.

    Only for identifiers the caller chose (names, versions, ids), never household values.
    """
    text = str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def clip(message: str, limit: int = MESSAGE_MAX_CHARS) -> str:
    """``message`` cut to ``limit`` characters (the last resort for status messages)."""
    if len(message) <= limit:
        return message
    return message[:limit] + f"... [cut: {len(message)} characters]"


class RoostError(Exception):
    """Base of all domain errors."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN


class InvalidArgument(RoostError):
    """The request itself is wrong: bad shape, dtype, NaN, missing field."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(RoostError):
    """An id (model, decision, job) that does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(RoostError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(RoostError):
    """The system is not in a state that allows this (e.g. budget exhausted)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class PermissionDenied(RoostError):
    """The caller's role may not call this RPC."""

    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(RoostError):
    code = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhausted(RoostError):
    """A bounded resource (queue, message size) is full; retry later or send less."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(RoostError):
    """Transient: retry with backoff."""

    code = grpc.StatusCode.UNAVAILABLE


class Unimplemented(RoostError):
    """The RPC is part of the v1 API but this build does not serve it yet."""

    code = grpc.StatusCode.UNIMPLEMENTED
