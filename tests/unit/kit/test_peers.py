"""One translation of peer errors: a refusal keeps its meaning, an outage stays
retryable, and the peer's details are echoed only when asked. One channel opener."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from services.kit.auth import Role
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
from services.kit.peers import is_retryable, peer_channel, peer_error


class Failed(grpc.RpcError):
    """What a failed call raises: a code and the peer's details."""

    def __init__(self, code: grpc.StatusCode | None, details: str = "") -> None:
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def details(self) -> str:
        return self._details


PERMANENT: list[tuple[grpc.StatusCode, type[RoostError]]] = [
    (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgument),
    (grpc.StatusCode.OUT_OF_RANGE, InvalidArgument),
    (grpc.StatusCode.NOT_FOUND, NotFound),
    (grpc.StatusCode.ALREADY_EXISTS, AlreadyExists),
    (grpc.StatusCode.FAILED_PRECONDITION, FailedPrecondition),
    (grpc.StatusCode.ABORTED, FailedPrecondition),
    (grpc.StatusCode.PERMISSION_DENIED, PermissionDenied),
    (grpc.StatusCode.UNAUTHENTICATED, Unauthenticated),
    (grpc.StatusCode.UNIMPLEMENTED, Unimplemented),
]
RETRYABLE = [
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.DATA_LOSS,
]


@pytest.mark.parametrize(("code", "kind"), PERMANENT)
def test_a_refusal_keeps_its_meaning(code: grpc.StatusCode, kind: type[RoostError]) -> None:
    e = Failed(code, "model_name: required")
    assert not is_retryable(e)
    error = peer_error(e, "update", "Stage")
    assert type(error) is kind
    assert str(error) == f"update service: Stage failed ({code.name})"


@pytest.mark.parametrize("code", RETRYABLE)
def test_an_outage_or_a_peer_failure_is_retryable(code: grpc.StatusCode) -> None:
    e = Failed(code, "connection refused")
    assert is_retryable(e)
    assert type(peer_error(e, "audit", "AppendDecisions")) is Unavailable


def test_backpressure_is_retryable_and_keeps_its_meaning() -> None:
    """The audit log answers RESOURCE_EXHAUSTED when its pending appends are full."""
    e = Failed(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many pending appends; retry later")
    assert is_retryable(e)
    assert type(peer_error(e, "audit", "AppendDecisions")) is ResourceExhausted


def test_invalid_argument_never_becomes_unavailable() -> None:
    error = peer_error(Failed(grpc.StatusCode.INVALID_ARGUMENT), "inference", "PredictBatch")
    assert not isinstance(error, Unavailable)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT


def test_details_are_echoed_only_when_asked() -> None:
    e = Failed(grpc.StatusCode.FAILED_PRECONDITION, "inputs[0] (co2): 4242 is out of range")
    assert "4242" not in str(peer_error(e, "inference", "Predict"))
    echoed = peer_error(e, "inference", "Predict", echo_details=True)
    assert str(echoed) == (
        "inference service: Predict failed (FAILED_PRECONDITION): "
        "inputs[0] (co2): 4242 is out of range"
    )


def test_an_error_without_a_code_is_unknown_and_retryable() -> None:
    e = Failed(None)
    assert is_retryable(e)
    assert str(peer_error(e, "audit", "GetCheckpoint")) == (
        "audit service: GetCheckpoint failed (UNKNOWN)"
    )


def test_a_peer_channel_needs_an_address(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no address configured for the audit service"):
        peer_channel("", certs_dir=tmp_path, role=Role.HUB, peer=Role.AUDIT)
