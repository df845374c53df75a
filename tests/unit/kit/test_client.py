"""Every channel reconnects within about a second of its peer being back."""

from __future__ import annotations

from services.kit.auth import Role
from services.kit.client import _options


def test_reconnect_backoff_is_bounded_to_about_a_second() -> None:
    options = dict(_options(Role.AUDIT, 1024))
    # gRPC's defaults: 1 s growing 1.6x to 120 s, and a 20 s connect timeout.
    assert options["grpc.initial_reconnect_backoff_ms"] <= 1_000
    assert options["grpc.max_reconnect_backoff_ms"] == 1_000
    assert options["grpc.min_reconnect_backoff_ms"] == 1_000
