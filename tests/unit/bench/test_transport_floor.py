"""The transport floor's baselines measure what they say (a real mTLS echo, real fsyncs)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from grpc import aio

from bench.transport_floor import EchoServer, design_floor, fsync_ms, grpc_echo, main, measure
from services.kit.certs import ensure_certs


def test_the_floor_is_two_hops_two_round_trips_and_one_fsync() -> None:
    got = design_floor(echo_p50=0.4, grpc_p50=0.6, fsync_p50=0.3, grpc_cpu=0.7)
    assert got == pytest.approx({"floor_p50_ms": 2.3, "floor_cpu_ms": 1.4})


def test_fsync_times_each_append(tmp_path: Path) -> None:
    got = fsync_ms(tmp_path, n=20)
    assert len(got) == 20
    assert all(v > 0 for v in got)
    assert list(tmp_path.iterdir()) == []  # its file is gone


def test_the_echo_round_trips_over_mtls_and_counts_both_ends(tmp_path: Path) -> None:
    ensure_certs(tmp_path / "certs")
    with EchoServer(tmp_path / "certs") as server:
        echo = asyncio.run(grpc_echo(server, rate=200, seconds=0.5))
        summary = asyncio.run(measure(server, tmp_path, rate=200, seconds=0.25))
    assert len(echo["latencies_ms"]) == 100
    assert all(0 < v < 1000 for v in echo["latencies_ms"])
    # Both processes did work for each round trip (CPU is counted in clock ticks).
    assert echo["server_cpu_ms"] > 0
    assert echo["client_cpu_ms"] > 0
    assert summary["grpc_cpu_ms"] == pytest.approx(
        summary["grpc_server_cpu_ms"] + summary["grpc_client_cpu_ms"]
    )
    assert summary["fsync_p50"] > 0


def test_a_client_without_the_stacks_certificate_is_refused(tmp_path: Path) -> None:
    ensure_certs(tmp_path / "certs")
    ensure_certs(tmp_path / "other", hub_id="other")
    with EchoServer(tmp_path / "certs") as server:
        server.certs_dir = tmp_path / "other"  # the client side's certificates: another CA
        with pytest.raises(aio.AioRpcError) as refused:
            asyncio.run(asyncio.wait_for(grpc_echo(server, rate=200, seconds=0.1), 10))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("argv", [["abc"], ["0"], ["200", "--seconds", "-1"]])
def test_bad_arguments_are_refused_before_anything_starts(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as refused:
        main(argv)
    assert refused.value.code == 2
