"""The training child process: one DP fine-tuning run, bounded in time, memory and CPU.

The service starts :func:`run` in a ``multiprocessing`` *spawn* child (a fresh
interpreter: no inherited threads, locks or gRPC state). The child

1. lowers its priority (``os.nice``) and, once torch and onnxruntime are imported, caps
   its address space (``RLIMIT_AS`` = what the imports mapped + ``max_memory_mb``), so a
   run can slow down or fail, never starve the hub's serving path;
2. re-derives the DP mechanism (noise multiplier, sample rate, steps) from the same
   inputs as the service and refuses to train unless it is exactly the mechanism the
   service reserved in the privacy ledger;
3. reads the pinned household rows from the example store (``seq <= max_seq``), trains
   with :func:`services.personalization.finetune.dp_finetune` under a wall-time bound,
   measures forgetting on public data when it is available, and exports the candidate
   ONNX (parity-checked) into the job's directory;
4. reports through a one-way pipe: ``("started",)`` just before the first step touches
   household data, ``("progress", fraction, steps)``, then ``("result", {...})`` or
   ``("error", message, started, steps, exact)`` (``exact``: training had returned, so
   ``steps`` is the exact count; otherwise it is the last one reported).

Messages carry counts, fractions and the mechanism, never a household value; error
messages are reduced to the exception type (an exception text could quote a value).
The child exits on its own if the service dies (its parent changes), so an orphan never
keeps training.
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import sys
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from services.personalization.finetune import FinetuneResult
    from services.personalization.public import PublicData
    from services.personalization.store import ExampleStore

#: Seconds kept for export and the forgetting measurement after training stops.
EXPORT_RESERVE_SECONDS = 3.0


class JobRefused(Exception):
    """A check of the child failed; its message is ours (no household value)."""


@dataclass(frozen=True)
class Plan:
    """The DP mechanism a job will run (what the ledger reserves)."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    epochs: float
    n_private: int
    n_replay: int
    #: The privacy unit ("day" or "example") and the private units (days or rows).
    unit: str = "example"
    n_units: int = 0


@dataclass(frozen=True)
class JobSpec:
    """Everything the child needs (picklable; paths as strings)."""

    job_id: str
    task: str
    model: str
    base_onnx: str
    labels: tuple[str, ...]
    shape: tuple[int, ...]
    store_path: str
    # The public base-task data (replay); None: the default data directory.
    public_data_dir: str | None
    max_seq: int
    target_epsilon: float
    delta: float
    accountant: str
    plan: Plan
    seed: int
    max_seconds: float
    nice: int
    max_memory_mb: int
    out_onnx: str


def make_plan(
    task: str,
    *,
    n_private: int,
    n_replay: int,
    target_epsilon: float,
    delta: float,
    accountant: str,
    epochs: float,
    unit: str = "example",
    n_days: int = 0,
) -> Plan:
    """The mechanism ``dp_finetune`` will run for these inputs (same arithmetic).

    ``unit`` "day": ``n_days`` private days, the replay rows split into as many
    pseudo-days (at most one per row). ``epochs`` 0 means the task's default. Imports
    the fine-tuning library (torch).
    """
    from services.personalization.finetune import (  # noqa: PLC0415
        calibrate_noise,
        hyper_parameters,
    )

    hyper = hyper_parameters(task, unit)
    epochs = float(epochs or hyper["epochs"])
    if unit == "day":
        n_units = n_days
        n = n_days + min(n_days, n_replay)
    else:
        n_units, n = n_private, n_private + n_replay
    sample_rate = min(1.0, int(hyper["expected_batch_size"]) / n)
    steps = max(1, math.ceil(epochs / sample_rate))
    noise = calibrate_noise(target_epsilon, delta, sample_rate, steps, accountant)
    return Plan(noise, sample_rate, steps, epochs, n_private, n_replay, unit, n_units)


def _limit_resources(nice: int, max_memory_mb: int) -> None:
    if nice:
        os.nice(nice)
    status = Path("/proc/self/status")
    mapped = 0
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmSize:"):
                mapped = int(line.split()[1]) * 1024
    limit = mapped + max_memory_mb * 1024 * 1024
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _accuracy(model: Any, x: Any) -> Any:
    import torch  # noqa: PLC0415

    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy().argmax(axis=1)


def _forgetting_metric(model: Any, data: PublicData | None) -> float:
    """Accuracy on the public evaluation rows; nan without public data."""
    if data is None:
        return math.nan
    return float((_accuracy(model, data.x_eval) == data.y_eval).mean())


def _pinned_rows(spec: JobSpec, store: ExampleStore) -> tuple[Any, Any, Any]:
    """The job's rows ``(x, y)``, ``x`` flat, and each row's UTC day, once they are known
    to be the planned ones."""
    from services.personalization.privacy_unit import day_of  # noqa: PLC0415

    x, y, observed = store.load_observed(spec.model, spec.labels, spec.shape, max_seq=spec.max_seq)
    if len(y) != spec.plan.n_private:
        raise JobRefused("the pinned examples changed since the job was planned")
    return x.reshape(len(y), math.prod(spec.shape)), y, day_of(observed)


def _check_replay(spec: JobSpec, data: PublicData | None) -> None:
    if spec.plan.n_replay and (data is None or len(data.y_replay) < spec.plan.n_replay):
        raise JobRefused("the public replay data changed since the job was planned")


def _check_plan(spec: JobSpec, n_private: int, n_days: int) -> None:
    """Refuses unless these inputs give exactly the mechanism the ledger reserved."""
    check = make_plan(
        spec.task,
        n_private=n_private,
        n_replay=spec.plan.n_replay,
        target_epsilon=spec.target_epsilon,
        delta=spec.delta,
        accountant=spec.accountant,
        epochs=spec.plan.epochs,
        unit=spec.plan.unit,
        n_days=n_days,
    )
    if check != spec.plan:
        raise JobRefused("the mechanism differs from the reserved one")


def _check_trained(spec: JobSpec, res: FinetuneResult) -> None:
    """Refuses a run whose mechanism is not the reserved one (or took more steps)."""
    if (res.noise_multiplier, res.sample_rate) != (
        spec.plan.noise_multiplier,
        spec.plan.sample_rate,
    ) or res.steps > spec.plan.steps:
        raise JobRefused("training ran another mechanism than the reserved one")


def _log_failure(spec: JobSpec, e: BaseException) -> None:
    # The exception text may quote a value: only its type leaves the child, and the
    # log gets the frames without the message.
    frames = "".join(traceback.format_tb(e.__traceback__))
    sys.stderr.write(f"training job {spec.job_id} failed: {type(e).__name__}\n{frames}")
    sys.stderr.flush()


def run(spec: JobSpec, conn: Connection) -> None:
    """Child entry point: trains, exports, reports; never raises."""
    parent = os.getppid()
    started = time.monotonic()
    training = False
    finished = False
    steps_seen = 0

    def send(*msg: Any) -> None:
        conn.send(msg)

    try:
        import torch  # noqa: PLC0415

        torch.set_num_threads(1)
        from services.personalization import public  # noqa: PLC0415
        from services.personalization.finetune import (  # noqa: PLC0415
            dp_finetune,
            hyper_parameters,
        )
        from services.personalization.onnx_roundtrip import (  # noqa: PLC0415
            base_model,
            export_candidate,
        )
        from services.personalization.store import ExampleStore  # noqa: PLC0415

        _limit_resources(spec.nice, spec.max_memory_mb)
        hyper = hyper_parameters(spec.task, spec.plan.unit)
        with ExampleStore.open(Path(spec.store_path)) as store:
            x, y, days = _pinned_rows(spec, store)
        public_dir = None if spec.public_data_dir is None else Path(spec.public_data_dir)
        data = (
            public.load(spec.task, spec.labels, spec.shape, public_dir)
            if spec.plan.n_replay
            else None
        )
        _check_replay(spec, data)
        # data is None without replay rows (and with them, _check_replay saw it loaded).
        replay = None if data is None else public.replay_subset(data, spec.plan.n_replay, spec.seed)
        _check_plan(spec, len(y), len(set(days.tolist())))
        base = base_model(spec.task, Path(spec.base_onnx))
        before = _forgetting_metric(base, data)

        def progress(fraction: float) -> None:
            nonlocal steps_seen
            steps_seen = min(spec.plan.steps, round(fraction * spec.plan.steps))
            if os.getppid() != parent:
                raise SystemExit(3)  # the service is gone: stop touching the data
            send("progress", fraction, steps_seen)

        budget = spec.max_seconds - (time.monotonic() - started) - EXPORT_RESERVE_SECONDS
        send("started")
        training = True
        res = dp_finetune(
            base,
            x,
            y,
            target_epsilon=spec.target_epsilon,
            delta=spec.delta,
            epochs=spec.plan.epochs,
            expected_batch_size=int(hyper["expected_batch_size"]),
            max_grad_norm=float(hyper["max_grad_norm"]),
            lr=float(hyper["lr"]),
            accountant=spec.accountant,
            trainable=str(hyper["trainable"]),
            distill_weight=float(hyper["distill_weight"]),
            replay=replay,
            seed=spec.seed,
            progress=progress,
            max_seconds=max(0.0, budget),
            days=days if spec.plan.unit == "day" else None,
        )
        steps_seen, finished = res.steps, True
        _check_trained(spec, res)
        after = _forgetting_metric(res.model, data)
        export_candidate(res.model, Path(spec.out_onnx), spec.task)
        send(
            "result",
            {
                "steps": res.steps,
                "epsilon": res.epsilon,
                "seconds": res.seconds,
                "epochs_done": res.epochs_done,
                "metric_before": before,
                "metric_after": after,
                "metric": "" if data is None else data.description,
            },
        )
    except BaseException as e:  # reported to the service, sanitized
        _log_failure(spec, e)
        message = str(e) if isinstance(e, JobRefused) else f"training failed ({type(e).__name__})"
        with contextlib.suppress(OSError, ValueError):
            send("error", message, training, steps_seen if training else 0, finished)
    finally:
        conn.close()
