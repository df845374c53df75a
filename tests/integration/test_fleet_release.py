"""The fleet's result comes back the safe way, on real processes: a fleet run's report
(written by the ServerApp's own ``RoostFedAvg``) is published by ``cli/fleet_release.py``
as a TUF-signed release in a real repository served by a real HTTP mirror; a hub's update
service (audit + inference + update over mTLS) sees it in CheckForUpdates, stages it
(TUF, stage-time checks), runs it in shadow under load, promotes and rolls it back with
no failed Predict call. Attacks: a tampered target and a release signed with a foreign
key are refused at stage, the running model unchanged. (The real Flower run that publishes
its release: tests/integration/test_fleet_flower.py.)
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from securesystemslib.signer import CryptoSigner  # type: ignore[attr-defined]

from cli.fleet_release import FleetRun, build_release, publish_run, wait_for_run
from cli.stack import Stack
from models.manifest import shipped_models_dir
from roost.audit.v1 import audit_service_pb2 as audit_pb
from roost.audit.v1 import audit_service_pb2_grpc as audit_grpc
from roost.common.v1 import common_pb2
from roost.inference.v1 import inference_service_pb2 as inf_pb
from roost.inference.v1 import inference_service_pb2_grpc as inf_grpc
from roost.update.v1 import update_service_pb2 as pb
from roost.update.v1 import update_service_pb2_grpc as pb_grpc
from services.kit.auth import Role
from services.modelstore.bundle import TargetInfo, pack_bundle
from tests.support.fleet_reports import shipped_head, write_report
from tests.support.mirrors import serve_mirror
from tests.support.model_versions import OCCUPIED
from tests.support.stacks import service_channel
from tests.support.tuf_world import World, forge
from tests.support.waiting import poll_async, wait_for_async

pytestmark = pytest.mark.integration

NAME = "occupancy"
BASE = shipped_models_dir() / NAME
VACANT = [20.5, 26.0, 0.0, 440.0, math.sin(2 * math.pi * 3 / 24), math.cos(2 * math.pi * 3 / 24)]
MIN_COMPARED = 30


@dataclass
class Hub:
    stack: Stack
    world: World
    release: TargetInfo
    tmp: Path


def fleet_run(tmp: Path, run_id: str, seed: int) -> FleetRun:
    """A 3-round run (4, 3, 2 hubs) ending near the shipped head (DP noise std 0.02)."""
    rng = np.random.default_rng(seed)
    final = (shipped_head() + rng.normal(0, 0.02, 66)).astype(np.float32)
    report = tmp / f"rounds-{run_id}.jsonl"
    write_report(report, run_id, [final / 3, 2 * final / 3, final], [4, 3, 2])
    run = wait_for_run(report, run_id, alive=lambda: True, stop=threading.Event())
    assert run is not None
    return run


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    tmp = tmp_path_factory.mktemp("fleet-release")
    world = World(tmp)  # the fleet operator's repository and keys; the hub trusts its root
    release = publish_run(fleet_run(tmp, "7001", seed=0), BASE, world.repo_dir, world.keys_dir)
    assert release is not None
    with serve_mirror(world.repo_dir) as mirror:
        stack = Stack(tmp / "home", hub_id="fleet-release")
        try:
            stack.start_service(Role.AUDIT)
            stack.start_service(Role.INFERENCE)
            stack.start_service(
                Role.UPDATE,
                {
                    "ROOST_UPDATE_TUF_SOURCE": mirror.url,
                    "ROOST_UPDATE_TUF_TRUSTED_ROOT": str(world.trusted_root),
                    "ROOST_UPDATE_HEALTH_CHECK_SECONDS": "0.3",
                    "ROOST_UPDATE_MIN_COMPARED": str(MIN_COMPARED),
                    # Steps are the test's; a loaded 2-core box is not a slow model.
                    "ROOST_UPDATE_AUTO_ADVANCE": "false",
                    "ROOST_UPDATE_MAX_P99_RATIO": "20",
                },
            )
            yield Hub(stack, world, release, tmp)
        finally:
            stack.stop()


def request(row: list[float], entity: str) -> inf_pb.PredictRequest:
    tensor = common_pb2.Tensor(dtype=common_pb2.DATA_TYPE_FLOAT32, shape=[6], float_values=row)
    return inf_pb.PredictRequest(model_name=NAME, input=tensor, entity_id=entity)


class Load:
    """Predict calls as the hub makes them, occupied and vacant rooms; counts failures."""

    def __init__(self, stub: inf_grpc.InferenceServiceAsyncStub) -> None:
        self.stub = stub
        self.ok = 0
        self.failed: list[str] = []
        self.last_version = ""

    async def run(self, stop: asyncio.Event, row: list[float], entity: str) -> None:
        while not stop.is_set():
            try:
                resp = await self.stub.Predict(request(row, entity), timeout=5)
                self.ok += 1
                self.last_version = resp.prediction.model.version
            except grpc.aio.AioRpcError as e:
                self.failed.append(f"{e.code().name}: {e.details()}")
            await asyncio.sleep(0.005)


@pytest.fixture
async def load(hub: Hub) -> AsyncIterator[Load]:
    ch = service_channel(hub.stack, Role.INFERENCE, Role.HUB)
    load = Load(inf_grpc.InferenceServiceStub(ch))
    stop = asyncio.Event()
    rooms = [(OCCUPIED, "occupancy.office"), (VACANT, "occupancy.bedroom")]
    tasks = [asyncio.create_task(load.run(stop, row, entity)) for row, entity in rooms]
    yield load
    stop.set()
    await asyncio.gather(*tasks)
    await ch.close()
    assert load.failed == []


def admin(hub: Hub) -> pb_grpc.UpdateServiceAsyncStub:
    return pb_grpc.UpdateServiceStub(service_channel(hub.stack, Role.UPDATE, Role.ADMIN))


async def status(update: pb_grpc.UpdateServiceAsyncStub) -> pb.RolloutStatus:
    res = await update.GetRolloutStatus(pb.GetRolloutStatusRequest(model_name=NAME), timeout=5)
    return res.status


async def audited(hub: Hub) -> list[str]:
    audit = audit_grpc.AuditServiceStub(service_channel(hub.stack, Role.AUDIT, Role.AUDITOR))
    resp = await audit.QueryDecisions(
        audit_pb.QueryDecisionsRequest(entity_id=f"roost.model.{NAME}", page_size=100), timeout=5
    )
    return [e.decision.action for e in resp.entries]


async def test_the_fleet_release_takes_the_normal_update_path(hub: Hub, load: Load) -> None:
    update = admin(hub)
    assert hub.release.version == "1.0.1"  # base 1.0.0, nothing published before
    available = await update.CheckForUpdates(pb.CheckForUpdatesRequest(), timeout=30)
    offered = {u.model.version: u for u in available.updates if u.model.name == NAME}
    assert list(offered) == ["1.0.1"]
    notes = offered["1.0.1"].release_notes
    for part in ("fleet run 7001", "3 rounds of 2-4 hubs", "delta 1e-05", "sigma 0.5", "C 1"):
        assert part in notes, notes

    staged = await update.Stage(pb.StageRequest(model_name=NAME, version="1.0.1"), timeout=60)
    assert (staged.staged.slot, staged.staged.source) == (pb.SLOT_CANDIDATE, pb.SOURCE_TUF)

    await update.StartRollout(
        pb.StartRolloutRequest(model_name=NAME, stage=pb.ROLLOUT_STAGE_SHADOW), timeout=10
    )
    shadow = await poll_async(
        lambda: status(update),
        lambda s: s.health.compared_predictions >= MIN_COMPARED and "so far" not in s.verdict,
        60,
        "a shadow verdict on enough compared rows",
    )
    assert shadow.verdict.startswith("healthy: "), shadow.verdict
    assert shadow.health.agreement >= 0.99  # the shipped head plus DP noise, same answers
    assert load.last_version == "1.0.0"  # shadow never answers

    await update.Promote(pb.PromoteRequest(model_name=NAME), timeout=10)
    await wait_for_async(lambda: _serving(load, "1.0.1"), 10, "1.0.1 serving")
    rolled = await update.Rollback(
        pb.RollbackRequest(model_name=NAME, reason="fleet release test"), timeout=10
    )
    assert rolled.active.model.version == "1.0.0"
    await wait_for_async(lambda: _serving(load, "1.0.0"), 10, "1.0.0 serving again")
    served = load.ok
    await wait_for_async(lambda: _more(load, served + 20), 20, "20 more predictions")
    assert (await audited(hub))[-4:] == [
        "update.stage",
        "update.shadow",
        "update.promote",
        "update.rollback",
    ]


async def _serving(load: Load, version: str) -> bool:
    return load.last_version == version


async def _more(load: Load, n: int) -> bool:
    return load.ok >= n


async def test_a_tampered_fleet_release_is_refused_at_stage(hub: Hub) -> None:
    second = publish_run(
        fleet_run(hub.tmp, "7002", seed=1), BASE, hub.world.repo_dir, hub.world.keys_dir
    )
    assert second is not None
    assert second.version == "1.0.2"
    target = hub.world.target_file(second)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01  # same length, one bit: only the hash can tell
    target.write_bytes(bytes(data))
    update = admin(hub)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await update.Stage(pb.StageRequest(model_name=NAME, version="1.0.2"), timeout=60)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = refused.value.details() or ""
    assert "does not match the length/hash its signed metadata declares" in details, details
    assert "the running model is unchanged" in details
    assert not (hub.stack.models_dir / NAME / "versions" / "1.0.2").exists()
    assert (await status(update)).active.version == "1.0.0"


async def test_a_fleet_release_signed_with_a_foreign_key_is_refused(hub: Hub) -> None:
    """An attacker with the online snapshot/timestamp keys lists a real fleet release as
    occupancy 1.2.0 in a family role signed by a key the repository does not trust."""
    run = fleet_run(hub.tmp, "7003", seed=2)
    model = build_release(run, BASE, hub.tmp / "foreign" / "model", "1.2.0")
    bundle = pack_bundle(model, hub.tmp / "foreign" / "occupancy-1.2.0.tar").path
    hub.world.reopen()  # publish_run signed with its own handle on the repository
    forge(hub.world, NAME, CryptoSigner.generate_ed25519(), bundle)
    update = admin(hub)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await update.Stage(pb.StageRequest(model_name=NAME, version="1.2.0"), timeout=60)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION, refused.value.details()
    details = refused.value.details() or ""
    assert "occupancy.json is not signed by the key(s) trusted for that role" in details, details
    assert not (hub.stack.models_dir / NAME / "versions" / "1.2.0").exists()
    assert (await status(update)).active.version == "1.0.0"
