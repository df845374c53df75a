"""The launcher's bookkeeping that needs no stack: a process's log tail is its own run's;
the ports it names before their processes bind them cannot be taken in between."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cli import stack as stack_mod
from cli.stack import Proc


def test_the_log_tail_is_this_runs_not_an_earlier_ones(tmp_path: Path) -> None:
    """A restarted child appends to the same log: a crash report must not quote (or find a
    crash topic in) what an earlier run logged."""
    log = tmp_path / "hub.log"
    log.write_text("CRITICAL hub.app: crashed handling a message on topic old/run\n")
    start = log.stat().st_size
    with log.open("ab") as out:
        popen = subprocess.Popen(
            [sys.executable, "-c", "print('this run'); raise SystemExit(1)"], stdout=out
        )
    popen.wait()
    proc = Proc("hub", popen, log, log_start=start)
    assert proc.log_tail() == "this run"
    assert Proc("hub", popen, log).log_tail().startswith("CRITICAL")  # from the start


def test_a_port_handed_out_comes_from_below_the_ephemeral_range() -> None:
    """A port named before its process binds it (personalization's, given to the update
    service first) must not be one an outgoing connection or a port-0 bind can take in
    the meantime: those come from the ephemeral range."""
    low = stack_mod.ephemeral_low()
    ports = [stack_mod.free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)  # never the same port twice
    for port in ports:
        assert stack_mod._RESERVED_PORTS_LOW <= port < low
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # and free
    # Meanwhile the kernel's own choices stay in the ephemeral range.
    for _ in range(20):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            assert s.getsockname()[1] >= low


def test_a_port_in_use_is_never_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        # A range of one port, which is taken: the fallback is a kernel-chosen port.
        monkeypatch.setattr(stack_mod, "_RESERVED_PORTS_LOW", taken)
        monkeypatch.setattr(stack_mod, "ephemeral_low", lambda: taken + 1)
        port = stack_mod.free_port()
        assert port != taken


def test_ephemeral_low_reads_the_kernel_and_falls_back(tmp_path: Path) -> None:
    f = tmp_path / "range"
    f.write_text("40000\t60999\n")
    assert stack_mod.ephemeral_low(f) == 40000
    assert stack_mod.ephemeral_low(tmp_path / "missing") == 32768
    f.write_text("garbage")
    assert stack_mod.ephemeral_low(f) == 32768
