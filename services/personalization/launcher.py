"""Starts a job's training child and follows it until it ends: the service's side of the pipe.

:func:`supervise` runs :func:`services.personalization.worker.run` in a ``spawn`` child
process, records ``started`` and the progress in the job table as the child reports them,
and returns an :class:`Outcome`: the child's result or error, or ``died`` (the pipe
closed without a last word), ``timeout`` (past the job's wall-time bound plus
``KILL_GRACE_SECONDS``) or ``shutdown`` (the service is stopping). Whatever the outcome,
the child is gone when it returns (killed unless it finished with a result).

For the non-result outcomes the outcome carries the last reported step count and whether
the child had started touching household data: what the ledger is settled with.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from typing import Any, Final, Literal

from services.personalization import worker
from services.personalization.job_table import JobRecord, JobTable

#: Seconds past a job's max duration before the child is killed (imports, export).
KILL_GRACE_SECONDS: Final = 60.0
#: Progress is written to the job table at most this often (and at 100 %).
_PROGRESS_SAVE_SECONDS: Final = 0.5
_POLL_SECONDS: Final = 0.25


@dataclass
class Outcome:
    """How a training child ended (see the module docstring)."""

    kind: Literal["result", "error", "died", "timeout", "shutdown"]
    message: str = ""
    started: bool = False
    steps: int = 0
    #: True when ``steps`` is the exact count (training had returned in the child).
    exact: bool = False
    result: dict[str, Any] | None = None


def _receive(conn: Connection, timeout: float) -> tuple[Any, ...] | None:
    """One message from the child, None on timeout, ("eof",) once it is gone."""
    try:
        if not conn.poll(timeout):
            return None
        msg = conn.recv()
    except (EOFError, OSError):
        return ("eof",)
    return tuple(msg)


def _quiet_outcome(closing: Callable[[], bool], deadline: float) -> Outcome | None:
    """How a job ends when its child has nothing to say: shutdown, timeout, or not yet."""
    if closing():
        return Outcome("shutdown", "stopped by a service shutdown")
    if time.monotonic() > deadline:
        return Outcome("timeout", "exceeded its time limit and was stopped")
    return None


def _last_word(msg: tuple[Any, ...]) -> Outcome | None:
    """The outcome a message ends the job with (gone, result or error), None for another."""
    if msg == ("eof",):
        return Outcome("died", "the training process ended unexpectedly")
    if msg[0] == "result":
        return Outcome("result", started=True, result=dict(msg[1]))
    if msg[0] == "error":
        started, steps, exact = bool(msg[2]), int(msg[3]), bool(msg[4])
        return Outcome("error", str(msg[1]), started, steps, exact)
    return None


async def supervise(
    rec: JobRecord, spec: worker.JobSpec, jobs: JobTable, closing: Callable[[], bool]
) -> Outcome:
    """Runs the child of job ``rec`` to its end; ``closing()`` True stops it (shutdown)."""
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=worker.run, args=(spec, send), name=f"roost-train-{rec.job_id[:8]}")
    proc.start()
    send.close()
    deadline = time.monotonic() + spec.max_seconds + KILL_GRACE_SECONDS
    started, steps, last_saved = False, 0, 0.0
    outcome: Outcome | None = None
    try:
        while outcome is None:
            msg = await asyncio.to_thread(_receive, receive, _POLL_SECONDS)
            if msg is None:
                outcome = _quiet_outcome(closing, deadline)
            elif msg[0] == "started":
                started = True
                rec = replace(rec, started=True)
                await asyncio.to_thread(jobs.put, rec)
            elif msg[0] == "progress":
                steps = int(msg[2])
                if time.monotonic() - last_saved > _PROGRESS_SAVE_SECONDS or msg[1] >= 1.0:
                    last_saved = time.monotonic()
                    rec = replace(rec, progress=min(1.0, float(msg[1])))
                    await asyncio.to_thread(jobs.put, rec)
            else:
                outcome = _last_word(msg)
    finally:
        if proc.is_alive() and (outcome is None or outcome.kind != "result"):
            proc.kill()
        await asyncio.to_thread(proc.join, 10)
        if proc.is_alive():
            proc.kill()
            await asyncio.to_thread(proc.join, 5)
        receive.close()
    if outcome.kind in ("died", "timeout", "shutdown"):
        outcome.started, outcome.steps = started, steps
    return outcome
