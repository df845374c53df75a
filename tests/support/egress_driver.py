"""The whole stack through a training job and an update: what the egress test traces.

Run as ``python -m tests.support.egress_driver WORKDIR`` inside a loopback-only network
namespace (see :mod:`tests.support.egress`). It brings ``lo`` up, serves a signed TUF
repository over http on loopback, starts the broker, the four services and the hub,
replays simulated readings, trains a DP fine-tuning job, stages a TUF update, keeps
everything running for ``--linger`` seconds (onnxruntime's telemetry fired ~10 s after
start when it was on), and prints one JSON line of what it did.

With ``--remote``, fleet learning and metrics sync are on too: a SuperLink on 127.0.0.2 and
a receiver Prometheus on 127.0.0.3 (:mod:`tests.support.egress_remote`) run in the same
namespace, the hub's SuperNode joins the one and its Prometheus writes to the other, and
the JSON line names both (address, port) pairs and what went through each.

The launcher passes its own environment to the children; ``ORT_DISABLE_TELEMETRY`` is
removed from it first, so every process must turn telemetry off by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import shutil
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cli.stack import Stack
from cli.tuf_repo import ModelRepository
from roost.audit.v1 import audit_service_pb2 as audit_pb
from roost.audit.v1 import audit_service_pb2_grpc as audit_grpc
from roost.personalization.v1 import personalization_service_pb2 as pers_pb
from roost.personalization.v1 import personalization_service_pb2_grpc as pers_grpc
from roost.update.v1 import update_service_pb2 as update_pb
from roost.update.v1 import update_service_pb2_grpc as update_grpc
from services.kit.auth import Role
from services.kit.tensors import array_to_tensor
from services.modelstore.bundle import pack_bundle
from tests.support.egress import bring_loopback_up
from tests.support.egress_remote import RemoteEnds, connect_hub, exercised, remote_ends
from tests.support.model_versions import occupancy_version
from tests.support.occupancy_rows import synthetic_occupancy
from tests.support.stacks import service_channel
from tests.support.waiting import poll_async

UPDATE_VERSION = "1.1.0"
N_EXAMPLES = 240


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        return


def serve_repository(repo_dir: Path) -> tuple[ThreadingHTTPServer, str]:
    handler = functools.partial(_Quiet, directory=str(repo_dir))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def publish(work: Path) -> tuple[Path, Path]:
    repo = ModelRepository.create(work / "repo", work / "keys")
    src = occupancy_version(work, UPDATE_VERSION)
    repo.publish("occupancy", pack_bundle(src, work / "bundle.tar").path, UPDATE_VERSION)
    trusted = work / "trusted-root.json"
    shutil.copy(repo.root_path, trusted)
    return work / "repo", trusted


def start(stack: Stack, source: str, trusted: Path) -> None:
    stack.start_broker()
    stack.start_service(Role.AUDIT)
    stack.start_service(Role.INFERENCE)
    stack.start_service(
        Role.UPDATE,
        {"ROOST_UPDATE_TUF_SOURCE": source, "ROOST_UPDATE_TUF_TRUSTED_ROOT": str(trusted)},
    )
    stack.start_service(
        Role.PERSONALIZATION,
        {"ROOST_PERSONALIZATION_MIN_EXAMPLES": "200", "ROOST_PERSONALIZATION_EPOCHS": "1"},
        timeout=60,
    )
    stack.start_hub()
    stack.start_simulator(speedup=600)


async def train(stack: Stack) -> str:
    hub = pers_grpc.PersonalizationServiceStub(
        service_channel(stack, Role.PERSONALIZATION, Role.HUB)
    )
    admin = pers_grpc.PersonalizationServiceStub(
        service_channel(stack, Role.PERSONALIZATION, Role.ADMIN)
    )
    x, labels = synthetic_occupancy(N_EXAMPLES, seed=3)
    start = int(time.time()) - 3600 * 6
    examples = []
    for i, (row, label) in enumerate(zip(x, labels, strict=True)):
        ex = pers_pb.Example(input=array_to_tensor(row), label=label)
        ex.observed_at.FromSeconds(start + 60 * i)
        examples.append(ex)
    await hub.AddExamples(
        pers_pb.AddExamplesRequest(
            model_name="occupancy", source=pers_pb.LABEL_SOURCE_SENSOR, examples=examples
        ),
        timeout=30,
    )
    started = await admin.StartTraining(
        pers_pb.StartTrainingRequest(model_name="occupancy", target_epsilon=1.0), timeout=60
    )
    job_id = started.job.job_id

    async def get_job() -> pers_pb.Job:
        return (await admin.GetJob(pers_pb.GetJobRequest(job_id=job_id), timeout=10)).job

    job = await poll_async(
        get_job, lambda j: j.state >= pers_pb.JOB_STATE_SUCCEEDED, 240, "the training job"
    )
    return str(pers_pb.JobState.Name(job.state))


async def update(stack: Stack) -> list[str]:
    admin = update_grpc.UpdateServiceStub(service_channel(stack, Role.UPDATE, Role.ADMIN))
    found = await admin.CheckForUpdates(update_pb.CheckForUpdatesRequest(), timeout=60)
    await admin.Stage(
        update_pb.StageRequest(model_name="occupancy", version=UPDATE_VERSION), timeout=120
    )
    return [f"{u.model.name} {u.model.version}" for u in found.updates]


async def decisions(stack: Stack) -> int:
    audit = audit_grpc.AuditServiceStub(service_channel(stack, Role.AUDIT, Role.AUDITOR))

    async def size() -> int:
        return int(
            (await audit.GetCheckpoint(audit_pb.GetCheckpointRequest(), timeout=10)).tree_size
        )

    return await poll_async(size, lambda n: n > 0, 120, "an audited decision")


async def drive(stack: Stack, linger: float) -> dict[str, object]:
    began = time.monotonic()
    job = await train(stack)
    offered = await update(stack)
    logged = await decisions(stack)
    # Not a wait for an event: the test watches for the absence of one over a window as
    # long as it took onnxruntime's uploader to fire when telemetry was on.
    await asyncio.sleep(max(0.0, linger - (time.monotonic() - began)))
    return {"job": job, "offered": offered, "audited": logged}


def run_hub(work: Path, linger: float, ends: RemoteEnds | None) -> dict[str, object]:
    repo_dir, trusted = publish(work)
    server, source = serve_repository(repo_dir)
    stack = Stack(work / "home", hub_id="egress")
    try:
        start(stack, source, trusted)
        if ends is not None:
            connect_hub(stack, ends)
        result = asyncio.run(drive(stack, linger))
        if ends is not None:
            result |= exercised(stack, ends)
            result["allowed"] = ends.allowed()
    finally:
        stack.stop()
        server.shutdown()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("work", type=Path)
    parser.add_argument("--linger", type=float, default=20.0)
    parser.add_argument("--remote", action="store_true", help="fleet and metrics sync on")
    args = parser.parse_args()
    bring_loopback_up()
    os.environ.pop("ORT_DISABLE_TELEMETRY", None)  # each child must turn it off itself
    if args.remote:
        with remote_ends(args.work) as ends:
            result = run_hub(args.work, args.linger, ends)
    else:
        result = run_hub(args.work, args.linger, None)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
