"""A release published with ``roost models publish`` carries its default canary set
(held-out rows with their true labels, signed in the bundle), and the real update
service checks it at stage: a label-inverted model signed into the same repository the
same way is refused by its own canary with nothing written, the good one installs with
its canary."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import grpc
import pytest

from bench.bad_models import bad_version
from cli.main import main
from cli.stack import Stack
from models.canary import CANARY_FILE
from models.manifest import load_manifest, shipped_models_dir
from roost.update.v1 import update_service_pb2 as pb
from roost.update.v1 import update_service_pb2_grpc as pb_grpc
from services.kit.auth import Role
from tests.support.shared_data import DATA_DIR, MISSING
from tests.support.stacks import service_channel

pytestmark = [pytest.mark.integration, pytest.mark.skipif(DATA_DIR is None, reason=MISSING)]
NAME = "occupancy"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("update-canary")
    repo, keys = tmp / "repo", tmp / "keys"
    where = ["--repo", str(repo), "--keys", str(keys), "--data-dir", str(DATA_DIR)]
    shipped = str(shipped_models_dir() / NAME)
    assert main(["models", "publish", shipped, "--version", "1.1.0", "--init", *where]) == 0
    inverted = bad_version(tmp, "label_inverted", "1.2.0")
    assert main(["models", "publish", str(inverted), *where]) == 0
    trusted = tmp / "trusted-root.json"
    shutil.copy(repo / "metadata" / "root.json", trusted)
    st = Stack(tmp / "home", hub_id="canary")
    try:
        st.start_service(Role.AUDIT)
        st.start_service(
            Role.UPDATE,
            {"ROOST_UPDATE_TUF_SOURCE": str(repo), "ROOST_UPDATE_TUF_TRUSTED_ROOT": str(trusted)},
        )
        yield st
    finally:
        st.stop()


async def test_the_inverted_release_is_refused_by_its_canary(stack: Stack) -> None:
    async with service_channel(stack, Role.UPDATE, Role.ADMIN) as channel:
        update = pb_grpc.UpdateServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await update.Stage(pb.StageRequest(model_name=NAME, version="1.2.0"), timeout=60)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        details = refused.value.details() or ""
        assert "canary: " in details
        assert "of 50 rows as expected (minimum 83%)" in details, details
        versions = stack.models_dir / NAME / "versions"
        assert not (versions / "1.2.0").exists()

        staged = await update.Stage(pb.StageRequest(model_name=NAME, version="1.1.0"), timeout=60)
        assert staged.staged.slot == pb.SLOT_CANDIDATE
        installed = versions / "1.1.0"
        assert (installed / CANARY_FILE).is_file()
        assert load_manifest(installed).canary is not None
