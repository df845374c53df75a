"""Calls to other Roost services: the channel to a peer, and one translation of its
errors into domain errors.

:func:`peer_channel` opens the mTLS channel from this process's role to a peer service
(through :mod:`services.kit.client`, the one channel factory, which the CLI also uses).

A failed call to a peer is either **permanent** (the peer understood the request and
refused it: ``INVALID_ARGUMENT``, ``NOT_FOUND``, ``FAILED_PRECONDITION``,
``PERMISSION_DENIED``, ...) or **retryable** (everything else: the peer is down,
restarting or slow — ``UNAVAILABLE``, ``DEADLINE_EXCEEDED`` — or failed on its side —
``INTERNAL``, ``UNKNOWN``, ``CANCELLED`` — or pushes back: ``RESOURCE_EXHAUSTED``, which
a peer answers when a bounded queue is full, e.g. the audit log's pending appends).
The two must never be confused: a refusal turned into ``Unavailable`` is retried for
ever, and an outage turned into a refusal drops work that a retry would have saved.
Every service and the hub translate peer errors here.

The peer's ``details()`` are not echoed by default: a peer's message may quote an
input the caller sent (e.g. a feature name next to a reading).
"""

from __future__ import annotations

from pathlib import Path

import grpc
from grpc import aio

from services.kit.auth import Role
from services.kit.client import aio_channel
from services.kit.config import ConfigError
from services.kit.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    RoostError,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)

_PERMANENT: dict[grpc.StatusCode, type[RoostError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.ABORTED: FailedPrecondition,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
}
# Retryable, but with its own meaning: the peer is alive and asks the caller to slow down.
_BACKPRESSURE: dict[grpc.StatusCode, type[RoostError]] = {
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
}


def peer_channel(target: str, *, certs_dir: Path, role: Role, peer: Role) -> aio.Channel:
    """The mTLS channel from this process (``role``) to the ``peer`` service at ``target``
    ('host:port', a config's ``<peer>_target``). The caller closes it."""
    if not target:
        raise ConfigError(f"no address configured for the {peer.value} service")
    return aio_channel(target, certs_dir=certs_dir, role=role, server_role=peer)


def status_of(e: grpc.RpcError) -> grpc.StatusCode:
    """The status code of a failed call (``UNKNOWN`` if the error carries none)."""
    code = e.code() if hasattr(e, "code") else None
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


def is_retryable(e: grpc.RpcError) -> bool:
    """True when the same call may succeed later (peer down, restarting, slow or failing)."""
    return status_of(e) not in _PERMANENT


def peer_error(
    e: grpc.RpcError, peer: str, method: str, *, echo_details: bool = False
) -> RoostError:
    """The domain error a caller raises for a failed call ``peer.method``.

    A refusal keeps its meaning (``INVALID_ARGUMENT`` → :class:`InvalidArgument`,
    ``NOT_FOUND`` → :class:`NotFound`, ...); every retryable code becomes
    :class:`Unavailable` (``RESOURCE_EXHAUSTED`` stays :class:`ResourceExhausted`),
    so callers retry it with backoff. The message names
    peer, method and code, and the peer's details only when ``echo_details``
    (they may quote the caller's input).
    """
    code = status_of(e)
    message = f"{peer} service: {method} failed ({code.name})"
    if echo_details:
        details = e.details() if hasattr(e, "details") else None
        if details:
            message = f"{message}: {details}"
    kind = _PERMANENT.get(code) or _BACKPRESSURE.get(code, Unavailable)
    return kind(message)
