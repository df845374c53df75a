"""Waiting on a condition in tests: poll a predicate until it holds or a deadline passes.

    state = wait_until(lambda: ha.state("light.kitchen"), 15, "the kitchen light")
    await wait_until_async(lambda: len(decisions.items) >= 3, 10, "three decisions")

Both return the predicate's first truthy result and raise :class:`WaitTimeout` (an
AssertionError, so pytest reports it as a failure) naming what was awaited. ``what`` may be
a callable, evaluated only on failure (e.g. to show the last state seen). This is the one
way tests wait for something to happen: never a bare ``sleep`` followed by a check.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

INTERVAL = 0.1  # seconds between polls


class WaitTimeout(AssertionError):
    """The condition did not hold before the deadline."""


def _message(what: str | Callable[[], str], timeout: float) -> str:
    text = what() if callable(what) else what
    return f"timed out after {timeout:g}s waiting for {text}"


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    what: str | Callable[[], str],
    *,
    interval: float = INTERVAL,
) -> T:
    """Poll ``predicate`` (blocking) until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise WaitTimeout(_message(what, timeout))
        time.sleep(interval)


async def wait_until_async(
    predicate: Callable[[], T],
    timeout: float,
    what: str | Callable[[], str],
    *,
    interval: float = INTERVAL,
) -> T:
    """:func:`wait_until` for coroutines: the event loop keeps running between polls."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise WaitTimeout(_message(what, timeout))
        await asyncio.sleep(interval)


async def poll_async(
    fetch: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    timeout: float,
    what: str,
    *,
    interval: float = INTERVAL,
) -> T:
    """Await ``fetch()`` until ``done`` holds for its result (e.g. an RPC reporting a job's
    state); return that result, or raise :class:`WaitTimeout` naming the last one."""
    deadline = time.monotonic() + timeout
    while True:
        result = await fetch()
        if done(result):
            return result
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"{_message(what, timeout)}; last: {result!r}")
        await asyncio.sleep(interval)


async def wait_for_async(
    predicate: Callable[[], Awaitable[bool]],
    timeout: float,
    what: str,
    *,
    interval: float = 0.02,
) -> None:
    """Await ``predicate()`` until it holds (e.g. an RPC answering as expected); raise
    :class:`WaitTimeout` naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() >= deadline:
            raise WaitTimeout(_message(what, timeout))
        await asyncio.sleep(interval)
