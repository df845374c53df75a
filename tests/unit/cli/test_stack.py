"""The launcher's bookkeeping that needs no stack: a process's log tail is its own run's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
