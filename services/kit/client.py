"""The one channel factory for calls to Roost services: mTLS with the caller's role
identity, the server verified as its role. Services open channels to their peers with
:func:`services.kit.peers.peer_channel`; the CLI uses :func:`sync_channel`."""

from __future__ import annotations

from pathlib import Path

import grpc
from grpc import aio

from services.kit.auth import Role
from services.kit.certs import load_identity, server_name

DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# Reconnecting to a peer that went away: first retry after 250 ms, then at most every
# second (gRPC's default backoff grows 1.6x to 120 s: after a 60 s outage a channel
# stayed down for another 11-14 s), and a connection attempt may take 1 s (default 20 s:
# a peer that vanished without a reset would hold the next attempt that long). With
# wait_for_ready, a waiting call proceeds as soon as the channel is back.
RECONNECT_INITIAL_MS = 250
RECONNECT_MAX_MS = 1_000
CONNECT_TIMEOUT_MS = 1_000


def _options(server_role: Role, max_message_bytes: int) -> list[tuple[str, int | str]]:
    return [
        # Verify the server's certificate against its role name (also the k3s Service).
        ("grpc.ssl_target_name_override", server_name(server_role)),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.enable_retries", 1),
        ("grpc.initial_reconnect_backoff_ms", RECONNECT_INITIAL_MS),
        ("grpc.max_reconnect_backoff_ms", RECONNECT_MAX_MS),
        # gRPC's name for the minimum connect timeout (connection-backoff.md).
        ("grpc.min_reconnect_backoff_ms", CONNECT_TIMEOUT_MS),
    ]


def _credentials(certs_dir: Path, role: Role) -> grpc.ChannelCredentials:
    ident = load_identity(certs_dir, role)
    return grpc.ssl_channel_credentials(
        root_certificates=ident.ca_pem,
        private_key=ident.key_pem,
        certificate_chain=ident.cert_pem,
    )


def aio_channel(
    target: str,
    *,
    certs_dir: Path,
    role: Role,
    server_role: Role,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> aio.Channel:
    """An asyncio channel to ``target`` ('host:port') as ``role``."""
    return aio.secure_channel(
        target, _credentials(certs_dir, role), options=_options(server_role, max_message_bytes)
    )


def sync_channel(
    target: str,
    *,
    certs_dir: Path,
    role: Role,
    server_role: Role,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> grpc.Channel:
    """A blocking channel, for the CLI."""
    return grpc.secure_channel(
        target, _credentials(certs_dir, role), options=_options(server_role, max_message_bytes)
    )
