"""The fleet bench's SuperExec runs ClientApp tasks only, each in the node's own home."""

from __future__ import annotations

from flwr.supercore.constant import TaskType
from flwr.supercore.superexec.executor import ExecutionSpec, LaunchResultStatus

from bench.fleet_superexec import ForkExecutor


def _spec(task_type: TaskType) -> ExecutionSpec:
    return ExecutionSpec(
        task_type=task_type,
        runtime_api_address="127.0.0.1:1",
        token="t",
        insecure=True,
        root_certificates_path=None,
        runtime_dependency_install=False,
        parent_pid=None,
        suppress_output=True,
        task_id=1,
    )


def test_it_asks_for_clientapp_tasks_only() -> None:
    ex = ForkExecutor({"127.0.0.1:1": "/tmp/x"})
    supported, hashes = ex.get_eligible_capacity(set(TaskType))
    assert supported == {TaskType.CLIENT_APP}
    assert hashes == set()


def test_other_tasks_are_refused_without_starting_anything() -> None:
    ex = ForkExecutor({"127.0.0.1:1": "/tmp/x"})
    for t in set(TaskType) - {TaskType.CLIENT_APP}:
        assert ex.launch(_spec(t)).status == LaunchResultStatus.FAILED
    assert ex.started == 0
    assert ex.running() == 0
