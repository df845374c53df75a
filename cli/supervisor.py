"""Keep a local stack running: restart a child that died, with backoff, and say why.

``roost run`` calls :meth:`Supervisor.tick` a few times a second. A tick never waits for
a child: it notices exits (``poll``), starts children whose backoff delay is over
(:meth:`cli.stack.Stack.respawn`) and notices restarted children serving
(:meth:`~cli.stack.Stack.poll_ready`). A child that dies waits 0.5 s before its restart,
doubling up to 30 s while it keeps dying soon after each start; one that stayed up for
``reset_after`` seconds starts again from 0.5 s. Three quick deaths in a row are a crash
loop, reported once with the process, its exit code or signal, the last lines of its
log, and the MQTT topic of the message it crashed on if its log names one (the hub logs
it). run/stack.json is rewritten at each change (new PIDs and ports, each child's state),
so ``roost status`` keeps answering throughout.

The simulator is restarted only if it fails: a clean exit means its replay is done.
A child taken out of the stack on purpose (:meth:`~cli.stack.Stack.stop_one`,
:meth:`~cli.stack.Stack.kill`) is left alone.
"""

from __future__ import annotations

import enum
import re
import shlex
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from cli.stack import Proc, Stack

# What the hub logs when a message makes it crash (hub/app.py), with the topic only.
CRASH_TOPIC = re.compile(r"crashed handling a message on topic (\S+)( \(retained\))?")
LOG_LINES = 15


@dataclass(frozen=True)
class Backoff:
    first: float = 0.5
    limit: float = 30.0
    # A child up this long is healthy again: its next crash restarts after `first`.
    reset_after: float = 10.0
    # This many crashes in a row, each within reset_after of its start: a crash loop.
    loop_after: int = 3
    # A restarted child not serving after this long is reported (and left to start).
    start_timeout: float = 30.0

    def delay(self, crashes: int) -> float:
        """The wait before restarting a child that crashed ``crashes`` times in a row."""
        return float(min(self.first * 2 ** max(crashes - 1, 0), self.limit))


class State(enum.Enum):
    RUNNING = "running"
    STARTING = "starting"
    WAITING = "restarting"
    DONE = "finished"


@dataclass
class Child:
    name: str
    state: State
    started: float
    crashes: int = 0  # in a row, each soon after its start
    restarts: int = 0
    next_start: float = 0.0
    slow_reported: bool = False
    loop_reported: bool = False


def exit_text(returncode: int) -> str:
    """``exit code 1`` or ``signal SIGKILL``."""
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


def crash_topic(log_tail: str) -> tuple[str, bool] | None:
    """The topic of the last message the log says the process crashed on, and whether
    it was retained (the broker hands it over again at every start)."""
    found = list(CRASH_TOPIC.finditer(log_tail))
    if not found:
        return None
    topic = "".join(c if c.isprintable() else "?" for c in found[-1].group(1))
    return topic, found[-1].group(2) is not None


class Supervisor:
    """Restarts the children of ``stack`` that die (see the module)."""

    def __init__(
        self,
        stack: Stack,
        *,
        backoff: Backoff | None = None,
        report: Callable[[str], None] = print,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stack = stack
        self.backoff = backoff or Backoff()
        self._report = report
        self._clock = clock
        now = clock()
        self.children = {name: Child(name, State.RUNNING, now) for name in stack.procs}

    def tick(self) -> None:
        """One look at every child; never waits for one. Rewrites stack.json on a change."""
        now = self._clock()
        changed = False
        for child in list(self.children.values()):
            proc = self.stack.procs.get(child.name)
            if proc is None:  # taken out of the stack on purpose
                del self.children[child.name]
                changed = True
            elif child.state is State.WAITING:
                changed |= self._restart_if_due(child, now)
            elif child.state is not State.DONE:
                changed |= self._watch(child, proc, now)
        if changed:
            self.stack.write_stack_file()

    def _watch(self, child: Child, proc: Proc, now: float) -> bool:
        returncode = proc.popen.poll()
        if returncode is not None:
            self._exited(child, proc, returncode, now)
            return True
        if child.state is not State.STARTING:
            return False
        if self.stack.poll_ready(child.name):
            child.state = State.RUNNING
            proc.state, proc.detail = State.RUNNING.value, f"restarted {child.restarts}x"
            self._report(f"{child.name} is back (pid {proc.popen.pid}, restart {child.restarts})")
            return True
        if now - child.started > self.backoff.start_timeout and not child.slow_reported:
            child.slow_reported = True
            proc.detail = f"not serving {self.backoff.start_timeout:.0f}s after its restart"
            self._report(f"{child.name} is {proc.detail}; still waiting. Its log: {proc.log_path}")
            return True
        return False

    def _exited(self, child: Child, proc: Proc, returncode: int, now: float) -> None:
        how = exit_text(returncode)
        if returncode == 0 and self.stack.launches[child.name].done_on_success:
            child.state = State.DONE
            proc.state, proc.detail = State.DONE.value, how
            return
        quick = now - child.started < self.backoff.reset_after
        child.crashes = child.crashes + 1 if quick else 1
        if child.crashes == 1:
            child.loop_reported = False
        delay = self.backoff.delay(child.crashes)
        child.state, child.next_start = State.WAITING, now + delay
        looping = child.crashes >= self.backoff.loop_after
        proc.state = "crash loop" if looping else State.WAITING.value
        proc.detail = f"{how} after {now - child.started:.1f}s; restart {child.restarts + 1}"
        if looping and not child.loop_reported:
            child.loop_reported = True
            self._report(self._loop_report(child, proc, how, delay))
        else:
            self._report(
                f"{child.name} (pid {proc.popen.pid}) exited: {how} after "
                f"{now - child.started:.1f}s; restarting in {delay:.1f}s"
            )

    def _restart_if_due(self, child: Child, now: float) -> bool:
        if now < child.next_start:
            return False
        proc = self.stack.respawn(child.name)
        child.state, child.started, child.slow_reported = State.STARTING, now, False
        child.restarts += 1
        proc.state, proc.detail = State.STARTING.value, f"restart {child.restarts}"
        return True

    def _loop_report(self, child: Child, proc: Proc, how: str, delay: float) -> str:
        tail = proc.log_tail(200)
        lines = [
            f"{child.name} is in a crash loop: it died {child.crashes} times in a row, each "
            f"within {self.backoff.reset_after:.0f}s of starting (last: {how}). Next try in "
            f"{delay:.1f}s; the wait doubles up to {self.backoff.limit:.0f}s.",
        ]
        topic = crash_topic(tail)
        if topic is not None:
            name, retained = topic
            lines.append(f"  It crashed on a message on topic {name}.")
            if retained:
                lines.append(
                    "  That message is retained: the broker sends it at every start. Remove "
                    f"it with: mosquitto_pub -p {self.stack.broker_port} -r -n -t "
                    f"{shlex.quote(name)}"
                )
        lines.append(f"  Last lines of {proc.log_path}:")
        lines.extend(f"    {line}" for line in tail.splitlines()[-LOG_LINES:])
        return "\n".join(lines)
