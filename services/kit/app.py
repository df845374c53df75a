"""The process of a Roost service: one :class:`App` per service, run under one
``contextlib.AsyncExitStack``.

A service's ``__main__`` loads its config and hands the App a ``setup`` coroutine.
:meth:`App.start` serves ``/metrics``, runs ``setup`` — which opens the service's
resources (:meth:`App.closing`), its channels to peers
(:meth:`App.peer`), its background tasks (:meth:`App.background`) and registers its
servicers with their POLICY (:meth:`App.register`) — then starts the one
:class:`~services.kit.server.RoostServer`. :meth:`App.serve` then handles SIGTERM
and SIGINT, writes the ready file and waits. :meth:`App.close` unwinds the stack in
reverse order: the server first (NOT_SERVING, drain, graceful stop), then the
background tasks, channels and resources, newest first. A start that fails part-way
unwinds what it had opened.
:meth:`App.run` is the whole ``main()``: logging, start, SIGTERM/SIGINT, close.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AsyncExitStack
from typing import Any, Protocol, TypeVar

from google.protobuf.descriptor import ServiceDescriptor
from grpc import aio

from services.kit.auth import Policy, Role
from services.kit.config import ServiceConfig
from services.kit.peers import peer_channel
from services.kit.process import configure_process, start_metrics, write_ready_file
from services.kit.server import Registration, RoostServer

log = logging.getLogger(__name__)

S = TypeVar("S")


class Closeable(Protocol):
    """A resource with a ``close()``, blocking or a coroutine."""

    def close(self) -> object: ...


C = TypeVar("C", bound=Closeable)
Setup = Callable[["App"], Awaitable[None]]


async def _close(resource: Closeable) -> None:
    result = resource.close()
    if inspect.isawaitable(result):
        await result


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class App:
    """One service process: ``App(config, role, setup).run()``."""

    def __init__(self, config: ServiceConfig, role: Role, setup: Setup) -> None:
        self.config = config
        self.role = role
        self._setup = setup
        self._stack = AsyncExitStack()
        self._registrations: list[Registration] = []
        self._stop = asyncio.Event()
        self.server: RoostServer | None = None
        self.port = 0
        self.metrics_port = 0
        self.ready = asyncio.Event()

    # ---------------------------------------------------------------- for setup

    def register(
        self,
        service: ServiceDescriptor,
        servicer: S,
        add_to_server: Callable[[S, aio.Server], None],
        policy: Policy,
    ) -> None:
        """Serve ``servicer`` as ``service`` (``<pb2>.DESCRIPTOR.services_by_name[...]``)
        with its generated ``add_<Service>Servicer_to_server``. Raises
        :class:`~services.kit.auth.PolicyError` (the service refuses to start) unless
        ``policy`` has an entry for exactly the service's methods."""
        self._registrations.append(Registration.of(service, servicer, add_to_server, policy))

    def closing(self, resource: C) -> C:
        """``resource``, closed (``close()``, awaited if a coroutine) when the app closes."""
        self._stack.push_async_callback(_close, resource)
        return resource

    def peer(self, peer: Role, target: str) -> aio.Channel:
        """The mTLS channel to the ``peer`` service at ``target``, closed with the app."""
        channel = peer_channel(target, certs_dir=self.config.certs_dir, role=self.role, peer=peer)
        self._stack.push_async_callback(channel.close)
        return channel

    def background(self, job: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Run ``job`` as a task until the app closes (then it is cancelled and awaited;
        an exception it raised is raised by :meth:`close`)."""
        task = asyncio.get_running_loop().create_task(job, name=name)
        self._stack.push_async_callback(_cancel, task)
        return task

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> int:
        """Metrics, ``setup``, the server; returns the gRPC port. On failure, everything
        opened so far is closed and the error raised."""
        try:
            self.metrics_port = start_metrics(self.config)
            await self._setup(self)
            server = RoostServer(self.config, self.role, self._registrations)
            self.server = server
            self._stack.push_async_callback(server.stop)
            self.port = await server.start()
        except BaseException:
            await self.close()
            raise
        return self.port

    def stop(self) -> None:
        """Ask :meth:`serve` to stop (what SIGTERM and SIGINT do)."""
        self._stop.set()

    async def close(self) -> None:
        """Stop the server and close everything, newest first."""
        await self._stack.aclose()

    async def serve(self) -> None:
        """Start, serve until SIGTERM/SIGINT (or :meth:`stop`), then close. The ready
        file is written once the signals are handled, so a launcher that read it may
        send SIGTERM at once."""
        await self.start()
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT)
        try:
            for sig in signals:
                loop.add_signal_handler(sig, self.stop)
            if self.config.ready_file is not None:
                write_ready_file(
                    self.config.ready_file, port=self.port, metrics_port=self.metrics_port
                )
            self.ready.set()
            await self._stop.wait()
            log.info("%s: shutdown requested", self.role.value)
        finally:
            try:
                await self.close()
            finally:
                for sig in signals:
                    loop.remove_signal_handler(sig)

    def run(self) -> None:
        """The ``main()`` of a service process: configure logging, then :meth:`serve`."""
        configure_process(self.config.log_level)
        asyncio.run(self.serve())
