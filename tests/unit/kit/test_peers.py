"""One translation of peer errors: refusals keep their meaning, outages stay retryable."""

from __future__ import annotations

import grpc
import pytest
from grpc.aio import AioRpcError, Metadata

from services.kit import errors
from services.kit.peers import is_retryable, peer_error

Code = grpc.StatusCode


def failed(code: grpc.StatusCode, details: str = "inputs[0] co2 was 612.0") -> AioRpcError:
    return AioRpcError(code, Metadata(), Metadata(), details=details)


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (Code.INVALID_ARGUMENT, errors.InvalidArgument),
        (Code.OUT_OF_RANGE, errors.InvalidArgument),
        (Code.NOT_FOUND, errors.NotFound),
        (Code.ALREADY_EXISTS, errors.AlreadyExists),
        (Code.FAILED_PRECONDITION, errors.FailedPrecondition),
        (Code.ABORTED, errors.FailedPrecondition),
        (Code.PERMISSION_DENIED, errors.PermissionDenied),
        (Code.UNAUTHENTICATED, errors.Unauthenticated),
        (Code.UNIMPLEMENTED, errors.Unimplemented),
    ],
)
def test_a_refusal_keeps_its_meaning_and_is_not_retried(
    code: grpc.StatusCode, kind: type[errors.RoostError]
) -> None:
    e = failed(code)
    err = peer_error(e, "audit", "AppendDecisions")
    assert type(err) is kind
    assert err.code == code or code in (Code.OUT_OF_RANGE, Code.ABORTED)
    assert not is_retryable(e)
    assert not isinstance(err, errors.Unavailable)


@pytest.mark.parametrize(
    "code",
    [Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED, Code.INTERNAL, Code.UNKNOWN, Code.CANCELLED],
)
def test_an_outage_or_a_peer_bug_is_retryable(code: grpc.StatusCode) -> None:
    e = failed(code)
    err = peer_error(e, "inference", "PredictBatch")
    assert type(err) is errors.Unavailable
    assert is_retryable(e)
    assert str(err) == f"inference service: PredictBatch failed ({code.name})"


def test_backpressure_is_retryable_and_says_so() -> None:
    e = failed(Code.RESOURCE_EXHAUSTED, "too many pending appends; retry later")
    assert is_retryable(e)
    assert type(peer_error(e, "audit", "AppendDecisions")) is errors.ResourceExhausted


def test_details_are_echoed_only_when_asked() -> None:
    e = failed(Code.INVALID_ARGUMENT)
    assert "612" not in str(peer_error(e, "inference", "PredictBatch"))
    echoed = peer_error(e, "update", "Stage", echo_details=True)
    assert str(echoed).endswith(": inputs[0] co2 was 612.0")
