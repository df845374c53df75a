"""``python -m bench.fleet_superexec``: one SuperExec for all of the fleet bench's
SuperNodes, starting each ``flwr-clientapp`` task by fork from a preloaded process.

Flower's own SuperExec (``flower-superexec``, one per SuperNode in ``--isolation
subprocess``) starts a fresh ``flwr-clientapp`` process per message, and each pays
~1.3 s of CPU importing Flower. A real hub pays that on its own cores; 50 simulated hubs
on the bench's 2 cores pay 4 messages x 50 hubs x 1.3 s = 260 CPU-seconds per SecAgg+
round, so the round time measured the start-ups, and a 50-hub run piled up 360 of them
and exhausted 24 GiB.

Here the SuperNodes run with ``--isolation process`` and this process stands in for
their SuperExecs: one thread per SuperNode acquires tasks from the SuperNode's Runtime
API (as ``flwr.supercore.superexec.run_superexec`` does), and each task runs Flower's own
``run_clientapp`` (pull the message, install the FAB, run the ClientApp, push the reply)
in a child forked from a ``multiprocessing`` fork server that has imported Flower and the
bench's ClientApp once. The protocol between SuperNode and ClientApp, and everything on
the wire to the SuperLink, is unchanged; only the process start-up cost is removed.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import threading
import time
from logging import WARNING
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess

import psutil
from flwr.proto.runtime_pb2 import AcquireTaskRequest
from flwr.supercore import log
from flwr.supercore.constant import TaskType
from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supercore.superexec.executor import ExecutionSpec, LaunchResult
from flwr.supercore.superexec.plugin import AutoExecPlugin

#: Imported once by the fork server, so a task's child starts with them loaded.
PRELOAD = ("flwr.supernode.runtime.run_clientapp", "bench.fleet_hub_app", "bench.fleet_superexec")


def _run_task(address: str, token: str, flwr_home: str, parent_pid: int) -> None:
    """A forked child: Flower's ``flwr-clientapp`` for one task, in the node's home."""
    from flwr.supernode.runtime.run_clientapp import run_clientapp

    os.environ["FLWR_HOME"] = flwr_home  # each node installs the FAB in its own home
    run_clientapp(runtime_api_address=address, token=token, insecure=True, parent_pid=parent_pid)


class ForkExecutor:
    """A SuperExec executor (``flwr.supercore.superexec.executor.types.Executor``) that
    runs ClientApp tasks in children of a preloaded fork server."""

    def __init__(self, homes: dict[str, str]) -> None:
        self._homes = homes
        self._ctx: ForkServerContext = multiprocessing.get_context("forkserver")
        self._ctx.set_forkserver_preload(list(PRELOAD))
        self._lock = threading.Lock()
        self._children: list[BaseProcess] = []
        self.started = 0

    def get_eligible_capacity(
        self,
        supported_task_types: set[TaskType],
        *,
        insecure: bool = False,
        root_certificates_path: str | None = None,
    ) -> tuple[set[TaskType], set[str]]:
        del insecure, root_certificates_path
        return supported_task_types & {TaskType.CLIENT_APP}, set()

    def wait_for_capacity(
        self,
        task_type: TaskType | None = None,
        *,
        fab_hash: str | None = None,
        insecure: bool = False,
        root_certificates_path: str | None = None,
    ) -> None:
        del task_type, fab_hash, insecure, root_certificates_path

    def launch(self, spec: ExecutionSpec) -> LaunchResult:
        if spec.task_type != TaskType.CLIENT_APP:
            return LaunchResult.failed(f"the bench runs ClientApps only, not {spec.task_type}")
        child = self._ctx.Process(
            target=_run_task,
            args=(
                spec.runtime_api_address,
                spec.token,
                self._homes[spec.runtime_api_address],
                os.getpid(),
            ),
            daemon=False,
        )
        with self._lock:
            child.start()
            self._children.append(child)
            self.started += 1
        return LaunchResult.accepted()

    def running(self) -> int:
        with self._lock:
            self._children = [c for c in self._children if c.is_alive()]
            return len(self._children)

    def reconcile(self) -> None:
        self.running()  # reap finished children

    def close(self) -> None:
        with self._lock:
            for c in self._children:
                c.join(timeout=5)


def _serve_node(address: str, executor: ForkExecutor, stop: threading.Event, poll: float) -> None:
    """``run_superexec``'s main loop for one SuperNode (without its signal handlers, which
    only the main thread may install)."""
    client = RuntimeHttpClient.from_server_address(
        server_address=address,
        insecure=True,
        root_certificates=None,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")],
        retry_invoker=make_simple_http_retry_invoker(),
    )
    plugin = AutoExecPlugin(
        runtime_api_address=address,
        insecure=True,
        root_certificates_path=None,
        runtime_dependency_install=False,
        executor=executor,
    )
    try:
        while not stop.is_set():
            supported, hashes = executor.get_eligible_capacity(set(plugin.supported_task_types))
            try:
                res = client.AcquireTask(
                    AcquireTaskRequest(supported_task_types=supported, agentapp_fab_hashes=hashes)
                )
            except Exception as e:  # the SuperNode stopped (the bench is ending) or restarts
                log(WARNING, "SuperNode %s: AcquireTask failed: %s", address, e)
                stop.wait(1.0)
                continue
            if res.HasField("task") and res.token:
                plugin.launch_task(token=res.token, task=res.task)
                continue  # another task may be waiting (SecAgg+ stages come back to back)
            stop.wait(poll)
    finally:
        client.close()


def serve(nodes: dict[str, str], poll: float = 0.25, parent_pid: int | None = None) -> None:
    """Serve ``nodes`` (Runtime API address -> FLWR_HOME) until the parent exits."""
    executor = ForkExecutor(nodes)
    stop = threading.Event()
    threads = [
        threading.Thread(target=_serve_node, args=(a, executor, stop, poll), daemon=True)
        for a in nodes
    ]
    for t in threads:
        t.start()
    try:
        while parent_pid is None or psutil.pid_exists(parent_pid):
            time.sleep(1.0)
            executor.reconcile()
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=5)
        executor.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--node", action="append", default=[], help="ADDRESS=FLWR_HOME of one SuperNode"
    )
    ap.add_argument("--parent-pid", type=int)
    args = ap.parse_args(argv)
    nodes = dict(n.split("=", 1) for n in args.node)
    serve(nodes, parent_pid=args.parent_pid)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
