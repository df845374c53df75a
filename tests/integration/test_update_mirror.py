"""No mirror can freeze the real update service.

A real HTTP mirror of a signed repository drips its timestamp (one byte every 2 s).
While the service is stuck on it: status, listing and rollback answer within 1 s
(deadlines on the calls), many ``CheckForUpdates`` join the one running fetch instead
of taking a thread each, and a stage is told to come back (``RESOURCE_EXHAUSTED``).
The fetch then fails on its own limits with ``UNAVAILABLE`` and a clear message, and
the service recovers as soon as the mirror does.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cli.stack import Stack
from cli.tuf_repo import ModelRepository
from roost.update.v1 import update_service_pb2 as pb
from roost.update.v1 import update_service_pb2_grpc as pb_grpc
from services.kit.auth import Role
from services.modelstore.bundle import pack_bundle
from tests.support.mirrors import Mirror, serve_mirror
from tests.support.model_versions import occupancy_version
from tests.support.stacks import service_channel
from tests.support.waiting import wait_until_async

pytestmark = pytest.mark.integration

NAME = "occupancy"
TOO_SLOW = re.compile(
    r"model repository too slow while fetching metadata/timestamp\.json: \d+ bytes in \d+ s, "
    r"below the minimum rate of 1024 bytes/s"
)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Mirror]]:
    tmp = tmp_path_factory.mktemp("mirror")
    repo = ModelRepository.create(tmp / "repo", tmp / "keys")
    for version in ("1.1.0", "1.2.0"):
        src = occupancy_version(tmp, version)
        repo.publish(NAME, pack_bundle(src, tmp / f"b-{version}.tar").path, version)
    trusted = tmp / "trusted-root.json"
    shutil.copy(repo.root_path, trusted)
    with serve_mirror(Path(tmp / "repo")) as mirror:
        stack = Stack(tmp / "home", hub_id="mirror")
        try:
            stack.start_service(Role.AUDIT)
            stack.start_service(Role.INFERENCE)
            stack.start_service(
                Role.UPDATE,
                {
                    "ROOST_UPDATE_TUF_SOURCE": mirror.url,
                    "ROOST_UPDATE_TUF_TRUSTED_ROOT": str(trusted),
                    "ROOST_UPDATE_AUTO_ROLLBACK": "false",
                    "ROOST_UPDATE_FETCH_MIN_BYTES_PER_SECOND": "1024",
                    "ROOST_UPDATE_FETCH_GRACE_SECONDS": "6",
                },
            )
            yield stack, mirror
        finally:
            stack.stop()


async def test_a_dripping_mirror_freezes_nothing(world: tuple[Stack, Mirror]) -> None:
    stack, mirror = world
    admin = pb_grpc.UpdateServiceStub(service_channel(stack, Role.UPDATE, Role.ADMIN))
    await admin.Stage(pb.StageRequest(model_name=NAME, version="1.1.0"), timeout=30)
    await admin.StartRollout(
        pb.StartRolloutRequest(model_name=NAME, stage=pb.ROLLOUT_STAGE_SHADOW), timeout=5
    )

    mirror.drip, mirror.drip_seconds, mirror.sent = re.compile(r"timestamp\.json$"), 2.0, 0
    checks = [asyncio.ensure_future(admin.CheckForUpdates(pb.CheckForUpdatesRequest(), timeout=60))]
    await wait_until_async(lambda: mirror.sent > 0, 30, "the mirror to start dripping")
    checks += [
        asyncio.ensure_future(admin.CheckForUpdates(pb.CheckForUpdatesRequest(), timeout=60))
        for _ in range(30)
    ]

    # The service answers within 1 s while the fetch is stuck.
    status = await admin.GetRolloutStatus(pb.GetRolloutStatusRequest(model_name=NAME), timeout=1)
    assert (status.status.stage, status.status.candidate.version) == (
        pb.ROLLOUT_STAGE_SHADOW,
        "1.1.0",
    )
    await admin.ListVersions(pb.ListVersionsRequest(model_name=NAME), timeout=1)
    rolled = await admin.Rollback(pb.RollbackRequest(model_name=NAME, reason="test"), timeout=1)
    assert rolled.active.model.version == "1.0.0"
    with pytest.raises(grpc.aio.AioRpcError) as busy:
        await admin.Stage(pb.StageRequest(model_name=NAME, version="1.2.0"), timeout=1)
    assert busy.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, busy.value.details()
    assert "already fetching from the model repository (check)" in (busy.value.details() or "")
    assert not any(c.done() for c in checks)

    # The fetch ends by its own limits; every check that joined it hears why.
    outcomes = await asyncio.gather(*checks, return_exceptions=True)
    for outcome in outcomes:
        assert isinstance(outcome, grpc.aio.AioRpcError), outcome
        assert outcome.code() == grpc.StatusCode.UNAVAILABLE
        assert TOO_SLOW.search(outcome.details() or ""), outcome.details()
        assert "the running model is unchanged" in (outcome.details() or "")

    with pytest.raises(grpc.aio.AioRpcError) as slow:
        await admin.Stage(pb.StageRequest(model_name=NAME, version="1.2.0"), timeout=60)
    assert slow.value.code() == grpc.StatusCode.UNAVAILABLE
    assert TOO_SLOW.search(slow.value.details() or ""), slow.value.details()

    mirror.drip = None  # the mirror recovers; so does the hub
    staged = await admin.Stage(pb.StageRequest(model_name=NAME, version="1.2.0"), timeout=30)
    assert (staged.staged.model.version, staged.staged.slot) == ("1.2.0", pb.SLOT_CANDIDATE)
