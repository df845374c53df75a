"""``roost personalize train|jobs|budget|ledger [rebuild]``: on-device DP fine-tuning, from a shell.

Talks to the personalization service (mTLS, ``admin`` identity by default; ``auditor``
reads the budget and the ledger), found through the stack of ``roost run`` unless
``--target``/``--certs`` say otherwise.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC
from typing import Any

from cli.support import CliError, stack_target

_STATES = {1: "queued", 2: "running", 3: "succeeded", 4: "failed", 5: "cancelled"}
_MECHANISMS = {1: "DP-SGD", 2: "federated delta"}


def _call(args: argparse.Namespace, method: str, request: Any, timeout: float = 60) -> Any:
    import grpc

    from roost.personalization.v1 import personalization_service_pb2_grpc as pb_grpc
    from services.kit.auth import Role
    from services.kit.client import sync_channel

    address, certs = stack_target(args, "personalization")
    try:
        channel = sync_channel(
            address, certs_dir=certs, role=Role(args.role), server_role=Role.PERSONALIZATION
        )
    except FileNotFoundError as e:
        raise CliError(f"no {args.role} credentials in {certs}: {e}") from None
    with channel:
        try:
            return getattr(pb_grpc.PersonalizationServiceStub(channel), method)(
                request, timeout=timeout
            )
        except grpc.RpcError as e:
            raise CliError(f"personalization service: {e.code().name}: {e.details()}") from None


def _unit(unit: str) -> str:
    """How a privacy unit reads to a homeowner (a service before units: example)."""
    return {"day": "household-day", "example": "example"}.get(unit, "example")


def job_line(job: Any) -> str:
    state = _STATES.get(job.state, "?")
    line = (
        f"{job.job_id[:12]}  {job.model_name:10} {state:9} {job.progress:4.0%}"
        f"  eps {job.epsilon_spent:.3f} per {_unit(job.privacy_unit)}"
    )
    if job.candidate.version:
        line += f"  candidate {job.candidate.version}"
    if job.base_task_metric_before:
        line += f"  base-task {job.base_task_metric_before:.4f} -> {job.base_task_metric_after:.4f}"
    if job.message:
        line += f"  ({job.message})"
    return line


def cmd_train(args: argparse.Namespace) -> int:
    from roost.personalization.v1 import personalization_service_pb2 as pb

    job = _call(
        args,
        "StartTraining",
        pb.StartTrainingRequest(
            model_name=args.model,
            target_epsilon=args.epsilon,
            max_duration_seconds=args.max_seconds,
        ),
    ).job
    print(job_line(job))
    while args.wait and job.state in (1, 2):
        time.sleep(1.0)
        job = _call(args, "GetJob", pb.GetJobRequest(job_id=job.job_id)).job
        print("\r" + job_line(job), end="", flush=True)
    if args.wait:
        print()
    return 0 if job.state in (1, 2, 3) else 1


def cmd_jobs(args: argparse.Namespace) -> int:
    from roost.personalization.v1 import personalization_service_pb2 as pb

    for job in _call(args, "ListJobs", pb.ListJobsRequest(page_size=args.limit)).jobs:
        print(job_line(job))
    return 0


def cmd_budget(args: argparse.Namespace) -> int:
    from roost.personalization.v1 import personalization_service_pb2 as pb

    b = _call(args, "GetPrivacyBudget", pb.GetPrivacyBudgetRequest(scope=args.scope)).budget
    days = round(
        (b.period_end.ToDatetime(UTC) - b.period_start.ToDatetime(UTC)).total_seconds() / 86400
    )
    print(
        f"{b.scope}: epsilon {b.epsilon_spent:.3f} of {b.epsilon_limit:g} spent per"
        f" {_unit(b.privacy_unit)} in the last {days} days (delta {b.delta:g})"
    )
    print(budget_meaning(b.epsilon_limit, b.delta, days, b.privacy_unit))
    return 0


def budget_meaning(epsilon: float, delta: float, days: int, unit: str = "day") -> str:
    """What the budget means to a homeowner, in one sentence."""
    what = "any one day of your home's life" if unit == "day" else "any single reading"
    return (
        f"Everything Roost learns from your home's data in any {days} days together reveals"
        f" at most epsilon {epsilon:g} (delta {delta:g}) about {what}, and a"
        f" reading is deleted after at most {days} days, so that limit holds for each"
        " reading for as long as it is kept."
    )


def cmd_ledger(args: argparse.Namespace) -> int:
    from roost.personalization.v1 import personalization_service_pb2 as pb

    if args.action == "rebuild":
        done = _call(args, "RebuildLedger", pb.RebuildLedgerRequest(), timeout=120)
        print(
            f"privacy ledger rebuilt from {done.records} audit records: {done.mechanisms}"
            " mechanisms; it matches the audit log (the replaced file is kept beside it)"
        )
        return 0
    resp = _call(
        args, "ListLedgerEntries", pb.ListLedgerEntriesRequest(scope=args.scope, page_size=100)
    )
    for e in resp.entries:
        print(
            f"{e.recorded_at.ToDatetime(UTC).isoformat(timespec='seconds')}  "
            f"{_MECHANISMS.get(e.mechanism, '?'):15} noise {e.noise_multiplier:.3f}"
            f"  q {e.sample_rate:.4f}  steps {e.steps:5d}  eps after {e.epsilon:.3f}"
            f"  delta {e.delta:g}  per {_unit(e.privacy_unit)}"
        )
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("personalize", help="on-device DP fine-tuning and the privacy budget")
    p.add_argument("--target", help="personalization service HOST:PORT (default: the stack's)")
    p.add_argument("--certs", help="certificates directory (default: the stack's)")
    p.add_argument("--role", default="admin", choices=["admin", "hub", "auditor"])
    commands = p.add_subparsers(dest="personalize_command", required=True)

    train = commands.add_parser("train", help="fine-tune a model on the local examples")
    train.add_argument("model", choices=["occupancy", "routine"])
    train.add_argument("--epsilon", type=float, required=True, help="privacy target of this run")
    train.add_argument("--max-seconds", type=int, default=0, help="0: the service default")
    train.add_argument("--wait", action="store_true", help="follow the job until it ends")
    train.set_defaults(func=cmd_train)

    jobs = commands.add_parser("jobs", help="training jobs, newest first")
    jobs.add_argument("--limit", type=int, default=20)
    jobs.set_defaults(func=cmd_jobs)

    budget = commands.add_parser(
        "budget", help="privacy budget spent in the sliding window, and what it means"
    )
    budget.add_argument("--scope", default="")
    budget.set_defaults(func=cmd_budget)

    ledger = commands.add_parser(
        "ledger",
        help="every DP mechanism applied, newest first; `ledger rebuild` rebuilds a deleted"
        " or edited ledger from the audit log (admin)",
    )
    ledger.add_argument("action", nargs="?", choices=["list", "rebuild"], default="list")
    ledger.add_argument("--scope", default="")
    ledger.set_defaults(func=cmd_ledger)
