"""Staging releases through the servicer with a real TUF repository on disk: nothing
refused reaches ``versions/``, an installed version is re-verified against fresh
metadata, and one fetch at a time runs however many callers ask."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from models.manifest import shipped_models_dir
from roost.update.v1 import update_service_pb2 as pb
from services.kit.auth import Role
from services.kit.errors import FailedPrecondition, ResourceExhausted
from services.modelstore.registry import Registry
from services.update.health import HealthPolicy
from services.update.servicer import UpdateServicer
from services.update.trail import Trail
from services.update.tuf_client import UpdateRefused
from tests.support.tuf_world import MAX_BUNDLE, World
from tests.support.update_fakes import FakeAudit, FakeStatus
from tests.unit.update.test_servicer import Context

NAME = "occupancy"
ADMIN = Context(Role.ADMIN)


class Env:
    def __init__(self, tmp: Path) -> None:
        self.world = World(tmp)
        for version in ("1.1.0", "1.2.0"):
            self.world.publish(version)
        self.registry = Registry(tmp / "registry")
        self.registry.bootstrap(shipped_models_dir())
        self.audit = FakeAudit()
        self.updater = self.world.updater()
        self.servicer = UpdateServicer(
            self.registry,
            Trail(self.audit, "test", 5.0),  # type: ignore[arg-type]
            updater=self.updater,
            status=FakeStatus(),
            local_public_key=None,
            max_bundle_bytes=MAX_BUNDLE,
            health_policy=HealthPolicy(),
        )

    async def stage(self, version: str) -> pb.StageResponse:
        request = pb.StageRequest(model_name=NAME, version=version)
        return await self.servicer.Stage(request, ADMIN)

    def on_disk(self) -> list[str]:
        """Everything below the registry root except the models' own files."""
        return sorted(
            str(p.relative_to(self.registry.root))
            for p in self.registry.root.rglob("*")
            if p.name.startswith(".") and p.name != ".lock"
        ) + sorted(p.name for p in (self.registry.root / NAME / "versions").iterdir())


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


async def test_a_refused_stage_writes_nothing(env: Env) -> None:
    await env.stage("1.1.0")
    await env.servicer.StartRollout(
        pb.StartRolloutRequest(model_name=NAME, stage=pb.ROLLOUT_STAGE_SHADOW), ADMIN
    )
    before = env.on_disk()
    with pytest.raises(FailedPrecondition, match=r"candidate 1\.1\.0 is in shadow"):
        await env.stage("1.2.0")
    assert env.on_disk() == before  # no versions/1.2.0, no .stage-* left behind
    assert "1.2.0" not in before


async def test_an_installed_version_is_reverified_against_fresh_metadata(env: Env) -> None:
    await env.stage("1.1.0")
    await env.servicer.Rollback(pb.RollbackRequest(model_name=NAME), ADMIN)
    assert "1.1.0" in env.on_disk()  # withdrawn, still on disk
    # The repository goes stale (or a freeze attack): staging it again must not skip TUF.
    env.world.repo.refresh_timestamp(expires=datetime.now(UTC) - timedelta(hours=1))
    with pytest.raises(UpdateRefused, match="timestamp metadata expired") as e:
        await env.stage("1.1.0")
    assert e.value.reason == "expired"
    assert env.registry.state(NAME).candidate is None
    env.world.repo.refresh_timestamp()
    staged = await env.stage("1.1.0")
    assert (staged.staged.model.version, staged.staged.slot) == ("1.1.0", pb.SLOT_CANDIDATE)


async def test_an_installed_version_that_differs_from_the_signed_one_is_refused(
    env: Env,
) -> None:
    await env.stage("1.1.0")
    await env.servicer.Rollback(pb.RollbackRequest(model_name=NAME), ADMIN)
    manifest = env.registry.version_dir(NAME, "1.1.0") / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"version"', '"version" ', 1))
    with pytest.raises(UpdateRefused, match="differs from the signed release") as e:
        await env.stage("1.1.0")
    assert e.value.reason == "manifest_mismatch"
    assert env.registry.state(NAME).candidate is None


async def test_one_fetch_at_a_time_and_checks_join_the_running_one(env: Env) -> None:
    """While a refresh is running (held here), more checks join it and a stage is told
    to come back: no caller starts a second fetch, none waits on a busy thread pool."""
    entered, release = threading.Event(), threading.Event()
    refresh = env.updater.refresh

    def held_refresh() -> None:
        entered.set()
        release.wait(30)
        refresh()

    env.updater.refresh = held_refresh  # type: ignore[method-assign]
    checks = [
        asyncio.create_task(env.servicer.CheckForUpdates(pb.CheckForUpdatesRequest(), ADMIN))
        for _ in range(20)
    ]
    await asyncio.to_thread(entered.wait, 30)
    with pytest.raises(ResourceExhausted, match="already fetching from the model repository"):
        await env.stage("1.1.0")
    status = await env.servicer.ListVersions(pb.ListVersionsRequest(model_name=NAME), ADMIN)
    assert [v.model.version for v in status.versions] == ["1.0.0"]
    release.set()
    results = await asyncio.gather(*checks)
    assert {tuple(u.model.version for u in r.updates) for r in results} == {("1.2.0",)}
