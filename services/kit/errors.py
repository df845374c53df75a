"""Domain errors of every Roost service: one shallow hierarchy.

Services raise these; the error-mapping interceptor (``services.kit.interceptors``)
turns them into gRPC status codes at the edge. Anything else that escapes a handler
is a bug and becomes a sanitized ``INTERNAL``. Messages must be actionable and must
never contain household values (readings, features): name the field, not its value.
"""

from __future__ import annotations

import grpc


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
