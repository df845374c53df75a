"""Supervision of a real stack: a child killed with SIGKILL is restarted on its port, the
hub decides again through it, and `roost status` answers throughout; a child that crashes
at once is restarted after growing delays and reported as a crash loop; a child stuck in
its start-up holds up nobody; `roost run` itself survives a killed service.

The supervisor is ticked by the test with a clock the test moves, so backoff delays are
checked as computed, not timed; the processes, broker and gRPC are real.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cli.main import main as roost
from cli.stack import STACK_FILE, Stack
from cli.supervisor import Backoff, Supervisor
from services.kit.auth import Role
from tests.support.mqtt_helpers import DAY_TS, OCCUPIED, collect_decisions, publish, readings
from tests.support.stacks import require_mosquitto, start_stack
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Supervised:
    """A stack, its supervisor on a test clock, and what the supervisor reported."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.clock = Clock()
        self.reports: list[str] = []
        self.supervisor = Supervisor(stack, report=self.reports.append, clock=self.clock)
        stack.write_stack_file()

    def tick_until(self, condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
        """Tick (as `roost run` does) until ``condition`` holds; the clock stands still."""

        def ticked() -> bool:
            self.supervisor.tick()
            return condition()

        wait_until(ticked, timeout, lambda: f"{what}; reports: {self.reports}", interval=0.05)

    def state(self, name: str) -> str:
        return self.stack.procs[name].state

    def stack_file(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.stack.home / "run" / STACK_FILE).read_text())
        return data

    def status(self, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
        """`roost status` on this stack: exit code and output."""
        code = roost(["--home", str(self.stack.home), "status", "--timeout", "5"])
        return code, capsys.readouterr().out


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[Supervised]:
    stack = start_stack(tmp_path)
    try:
        yield Supervised(stack)
    finally:
        stack.stop()


async def test_a_killed_service_comes_back_on_its_port_and_status_answers_throughout(
    supervised: Supervised, capsys: pytest.CaptureFixture[str]
) -> None:
    sup, stack = supervised, supervised.stack
    old_pid, port = stack.procs["audit"].popen.pid, stack.port_of(Role.AUDIT)
    os.kill(old_pid, signal.SIGKILL)
    sup.tick_until(lambda: sup.state("audit") == "restarting", "the death of audit noticed")
    # Between the death and the restart: stack.json is there, status answers and says so.
    code, out = sup.status(capsys)
    assert code == 1
    assert "FAIL  audit" in out
    assert "restarting: signal SIGKILL" in out
    assert "OK    inference" in out
    assert "OK    hub" in out
    assert sup.stack_file()["processes"]["audit"]["state"] == "restarting"
    assert sup.reports[-1].startswith(f"audit (pid {old_pid}) exited: signal SIGKILL")
    assert "restarting in 0.5s" in sup.reports[-1]

    sup.clock.now += 0.5
    sup.tick_until(lambda: sup.state("audit") == "running", "audit serving again")
    new = sup.stack_file()["processes"]["audit"]
    assert new["pid"] == stack.procs["audit"].popen.pid != old_pid
    assert new["port"] == port  # its peers' target: they reconnect by themselves
    code, out = sup.status(capsys)
    assert code == 0, out
    # The hub records decisions through the restarted audit service.
    async with collect_decisions(stack) as decisions:
        await publish(stack, readings("den", OCCUPIED, DAY_TS, "after-restart"))
        got = await decisions.wait_for(1, timeout=20)
    assert got[0]["audit_index"] >= 0
    assert stack.procs["hub"].alive()


def test_a_child_crashing_at_once_backs_off_and_is_reported_as_a_crash_loop(
    supervised: Supervised, capsys: pytest.CaptureFixture[str]
) -> None:
    sup, stack = supervised, supervised.stack
    # From now on audit cannot start: a broken setting makes it exit at once.
    env = stack.launches["audit"].env
    env["ROOST_AUDIT_GRACE_SECONDS"] = "soon"
    os.kill(stack.procs["audit"].popen.pid, signal.SIGKILL)
    delays: list[float] = []
    for crash in range(1, 6):
        sup.tick_until(
            lambda: sup.state("audit") in ("restarting", "crash loop"), f"crash {crash} noticed"
        )
        if crash == 3:
            code, out = sup.status(capsys)
            assert code == 1
            assert re.search(r"FAIL +audit +crash loop: exit code 1", out), out
        child = sup.supervisor.children["audit"]
        delays.append(child.next_start - sup.clock.now)
        sup.clock.now = child.next_start
        sup.tick_until(lambda: sup.state("audit") == "starting", f"restart {crash}")
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0]
    loops = [r for r in sup.reports if "crash loop" in r]
    assert len(loops) == 1, sup.reports  # reported once, not at every crash
    report = loops[0]
    assert report.startswith("audit is in a crash loop: it died 3 times in a row")
    assert "(last: exit code 1)" in report
    assert f"Last lines of {stack.procs['audit'].log_path}:" in report
    assert "config field 'grace_seconds'" in report  # the cause, from its log
    # Fixed: the next restart sticks, and a later crash starts from 0.5 s again.
    del env["ROOST_AUDIT_GRACE_SECONDS"]
    sup.tick_until(lambda: sup.state("audit") == "crash loop", "the last broken start ends")
    sup.clock.now = sup.supervisor.children["audit"].next_start
    sup.tick_until(lambda: sup.state("audit") == "running", "audit serving again")
    sup.clock.now += Backoff().reset_after
    os.kill(stack.procs["audit"].popen.pid, signal.SIGKILL)
    sup.tick_until(lambda: sup.state("audit") == "restarting", "the next death noticed")
    assert sup.supervisor.children["audit"].next_start - sup.clock.now == 0.5


def test_a_child_stuck_in_start_up_holds_up_nobody(supervised: Supervised) -> None:
    sup, stack = supervised, supervised.stack
    os.kill(stack.procs["audit"].popen.pid, signal.SIGKILL)
    sup.tick_until(lambda: sup.state("audit") == "restarting", "the death of audit noticed")
    sup.clock.now += 0.5
    sup.tick_until(lambda: sup.state("audit") == "starting", "audit restarted")
    stuck = stack.procs["audit"].popen.pid
    os.kill(stuck, signal.SIGSTOP)  # it will not get to serve until continued
    try:
        os.kill(stack.procs["inference"].popen.pid, signal.SIGKILL)
        sup.tick_until(lambda: sup.state("inference") == "restarting", "inference's death")
        sup.clock.now += 0.5
        sup.tick_until(lambda: sup.state("inference") == "running", "inference serving again")
        assert sup.state("audit") == "starting"
        # Slow to start is reported once, not killed: it may be waiting for a peer.
        sup.clock.now += Backoff().start_timeout + 1
        sup.tick_until(lambda: "not serving" in stack.procs["audit"].detail, "a slow start")
        assert [r for r in sup.reports if "not serving 30s after its restart" in r]
    finally:
        os.kill(stuck, signal.SIGCONT)
    sup.tick_until(lambda: sup.state("audit") == "running", "audit serving once continued")
    assert stack.procs["audit"].popen.pid == stuck


def test_roost_run_restarts_a_killed_service(tmp_path: Path) -> None:
    """The command itself: a SIGKILLed service no longer stops the stack."""
    require_mosquitto()
    stack_file = tmp_path / "run" / STACK_FILE
    with (tmp_path / "roost-run.out").open("wb") as out:
        run = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "--home", str(tmp_path), "run", "--speedup", "0"],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: stack_file.is_file() or run.poll() is not None, 90, "roost run to start")
        before = json.loads(stack_file.read_text())["processes"]["audit"]
        os.kill(before["pid"], signal.SIGKILL)

        def restarted() -> dict[str, Any] | None:
            assert run.poll() is None, (tmp_path / "roost-run.out").read_text()[-2000:]
            if not stack_file.is_file():  # the stack is gone (what a failure looked like)
                return None
            audit: dict[str, Any] = json.loads(stack_file.read_text())["processes"]["audit"]
            return audit if audit["pid"] != before["pid"] and audit["state"] == "running" else None

        after = wait_until(restarted, 60, "audit restarted under roost run")
        assert after["port"] == before["port"]
        assert roost(["--home", str(tmp_path), "status"]) == 0
        assert "audit (pid" in (tmp_path / "roost-run.out").read_text()
    finally:
        run.send_signal(signal.SIGTERM)
        assert run.wait(60) == 0
    assert not stack_file.exists()
