"""Who may do what to the real update service: every method x every role, over mTLS.

Everyone who needs it reads. Rolling back, starting a rollout and staging a release are
owner actions: the admin identity, or the hub relaying an owner's request
(``owner_request_id``) — never the hub by itself, whatever it sends otherwise.
Promoting (forced or not) is the admin's alone: Home Assistant never offers it.
Personalization stages local candidates only.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import grpc
import pytest

from cli.stack import Stack
from cli.tuf_repo import ModelRepository
from roost.update.v1 import update_service_pb2 as pb
from roost.update.v1 import update_service_pb2_grpc as pb_grpc
from services.kit.auth import Role
from services.modelstore.bundle import pack_bundle
from services.update.servicer import POLICY
from tests.support.model_versions import occupancy_version
from tests.support.stacks import service_channel

pytestmark = pytest.mark.integration

Call = Callable[[pb_grpc.UpdateServiceStub], Awaitable[Any]]
NAME = "occupancy"
OWNER = "ha-0123456789abcdef"
READERS = {Role.ADMIN, Role.HUB, Role.AUDITOR, Role.PERSONALIZATION}
OWNER_STEP = {Role.ADMIN}  # and the hub only with an owner's request
RELAYED = {Role.ADMIN, Role.HUB}
LEFTOVERS = (".stage-k9x2", ".local-k9x2", "occupancy/versions/.1.1.0.k9x2.tmp")


def _shadow(owner: str = "") -> pb.StartRolloutRequest:
    return pb.StartRolloutRequest(
        model_name=NAME, stage=pb.ROLLOUT_STAGE_SHADOW, owner_request_id=owner
    )


# (method, one request, the roles that get past authorization). Allowed calls may still
# fail for other reasons (no candidate yet, a bad bundle): only PERMISSION_DENIED counts.
CASES: dict[str, tuple[str, Call, set[Role]]] = {
    "ListVersions": (
        "ListVersions",
        lambda s: s.ListVersions(pb.ListVersionsRequest(), timeout=10),
        READERS,
    ),
    "GetRolloutStatus": (
        "GetRolloutStatus",
        lambda s: s.GetRolloutStatus(pb.GetRolloutStatusRequest(model_name=NAME), timeout=10),
        READERS,
    ),
    "CheckForUpdates": (
        "CheckForUpdates",
        lambda s: s.CheckForUpdates(pb.CheckForUpdatesRequest(), timeout=30),
        READERS,
    ),
    "GetDrift": (
        "GetDrift",
        lambda s: s.GetDrift(pb.GetDriftRequest(model_name=NAME), timeout=10),
        READERS,
    ),
    "Stage release": (
        "Stage",
        lambda s: s.Stage(pb.StageRequest(model_name=NAME, version="1.1.0"), timeout=30),
        OWNER_STEP,
    ),
    "Stage release, owner's request": (
        "Stage",
        lambda s: s.Stage(
            pb.StageRequest(model_name=NAME, version="1.1.0", owner_request_id=OWNER),
            timeout=30,
        ),
        RELAYED,
    ),
    "Stage local candidate": (
        "Stage",
        lambda s: s.Stage(
            pb.StageRequest(model_name=NAME, local_bundle=b"x", local_signature=b"y"),
            timeout=30,
        ),
        {Role.ADMIN, Role.PERSONALIZATION},
    ),
    "StartRollout": ("StartRollout", lambda s: s.StartRollout(_shadow(), timeout=10), OWNER_STEP),
    "StartRollout, owner's request": (
        "StartRollout",
        lambda s: s.StartRollout(_shadow(OWNER), timeout=10),
        RELAYED,
    ),
    "Promote": (
        "Promote",
        lambda s: s.Promote(pb.PromoteRequest(model_name=NAME), timeout=10),
        OWNER_STEP,
    ),
    "Promote, owner's request": (
        "Promote",
        lambda s: s.Promote(pb.PromoteRequest(model_name=NAME, owner_request_id=OWNER), timeout=10),
        OWNER_STEP,
    ),
    "Promote, forced": (
        "Promote",
        lambda s: s.Promote(
            pb.PromoteRequest(model_name=NAME, owner_request_id=OWNER, force=True), timeout=10
        ),
        OWNER_STEP,
    ),
    "Rollback": (
        "Rollback",
        lambda s: s.Rollback(pb.RollbackRequest(model_name=NAME), timeout=10),
        OWNER_STEP,
    ),
    "Rollback, owner's request": (
        "Rollback",
        lambda s: s.Rollback(
            pb.RollbackRequest(model_name=NAME, owner_request_id=OWNER), timeout=10
        ),
        RELAYED,
    ),
}


@pytest.fixture(scope="module")
def update(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("update-access")
    repo = ModelRepository.create(tmp / "repo", tmp / "keys")
    src = occupancy_version(tmp, "1.1.0")
    repo.publish(NAME, pack_bundle(src, tmp / "b.tar").path, "1.1.0")
    trusted = tmp / "trusted-root.json"
    shutil.copy(repo.root_path, trusted)
    stack = Stack(tmp / "home", hub_id="access")
    # What a kill -9 mid-stage leaves in the registry (test_crash_leftovers_...).
    for leftover in LEFTOVERS:
        (stack.models_dir / leftover).mkdir(parents=True)
        (stack.models_dir / leftover / "model.onnx").write_bytes(b"\0" * 4096)
    try:
        stack.start_service(Role.AUDIT)
        stack.start_service(
            Role.UPDATE,
            {
                "ROOST_UPDATE_TUF_SOURCE": str(tmp / "repo"),
                "ROOST_UPDATE_TUF_TRUSTED_ROOT": str(trusted),
                "ROOST_UPDATE_AUTO_ROLLBACK": "false",
            },
        )
        yield stack
    finally:
        stack.stop()


def test_every_method_is_covered() -> None:
    methods = pb.DESCRIPTOR.services_by_name["UpdateService"].methods_by_name
    assert {method for method, _, _ in CASES.values()} == set(methods)
    assert {m.rsplit("/", 1)[1] for m in POLICY} == set(methods)


@pytest.mark.parametrize("case", list(CASES))
async def test_each_role_gets_exactly_its_access(update: Stack, case: str) -> None:
    _, call, allowed = CASES[case]
    for role in Role:
        channel = service_channel(update, Role.UPDATE, role)
        try:
            await call(pb_grpc.UpdateServiceStub(channel))  # type: ignore[no-untyped-call]
            code, details = grpc.StatusCode.OK, ""
        except grpc.aio.AioRpcError as e:
            code, details = e.code(), e.details() or ""
        finally:
            await channel.close()
        if role in allowed:
            assert code != grpc.StatusCode.PERMISSION_DENIED, (case, role, details)
        else:
            assert code == grpc.StatusCode.PERMISSION_DENIED, (case, role, code, details)
            assert role.value in details, (case, role, details)


async def test_the_hub_cannot_walk_a_release_to_active_by_itself(update: Stack) -> None:
    """Everything the hub can send without an owner's request, in the order that would
    promote a release: each step refused, the registry unchanged, nothing audited."""
    hub = pb_grpc.UpdateServiceStub(service_channel(update, Role.UPDATE, Role.HUB))
    admin = pb_grpc.UpdateServiceStub(service_channel(update, Role.UPDATE, Role.ADMIN))
    with contextlib.suppress(grpc.aio.AioRpcError):  # whatever the table left staged
        await admin.Rollback(pb.RollbackRequest(model_name=NAME), timeout=10)
    before = await admin.GetRolloutStatus(pb.GetRolloutStatusRequest(model_name=NAME), timeout=10)
    for call, why in (
        (
            hub.Stage(pb.StageRequest(model_name=NAME, version="1.1.0"), timeout=30),
            "only to relay an owner's explicit request",
        ),
        (hub.StartRollout(_shadow(), timeout=10), "only to relay an owner's explicit request"),
        (
            hub.Promote(pb.PromoteRequest(model_name=NAME), timeout=10),
            "role 'hub' is not allowed to call this method",
        ),
        # Not even with an owner's request: Home Assistant never offers Promote.
        (
            hub.Promote(
                pb.PromoteRequest(model_name=NAME, owner_request_id=OWNER, force=True), timeout=10
            ),
            "role 'hub' is not allowed to call this method",
        ),
        (
            hub.Rollback(pb.RollbackRequest(model_name=NAME, reason="x"), timeout=10),
            "only to relay an owner's explicit request",
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await call
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert why in (e.value.details() or "")
    after = await admin.GetRolloutStatus(pb.GetRolloutStatusRequest(model_name=NAME), timeout=10)
    assert after == before


def test_crash_leftovers_are_swept_at_start(update: Stack) -> None:
    for leftover in LEFTOVERS:
        assert not (update.models_dir / leftover).exists(), leftover
    assert (update.models_dir / "occupancy" / "versions" / "1.0.0").is_dir()
