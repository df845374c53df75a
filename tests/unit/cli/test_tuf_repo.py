"""The publisher side of signed model updates (``cli.tuf_repo``, with its key files in
``cli.tuf_keys`` and its metadata in ``cli.tuf_metadata``): what it writes, and the
mistakes it refuses before any hub could see them."""

from __future__ import annotations

import json
import stat
from datetime import timedelta
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner  # type: ignore[attr-defined]

from cli.tuf_repo import POLICY_FILE, ModelRepository
from services.kit.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from tests.support.tuf_world import FAMILY, World, bundle_of, install_key, installed_world


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


@pytest.fixture
def installed(world: World) -> World:
    """The hub trusts the repository state after publishing 1.0.0 and runs 1.0.0."""
    return installed_world(world)


def test_publisher_refuses_a_wrong_key_file(installed: World) -> None:
    install_key(installed.keys_dir / f"{FAMILY}.pem", CryptoSigner.generate_ed25519().private_bytes)
    with pytest.raises(FailedPrecondition, match="not a key the repository trusts"):
        installed.reopen().publish(FAMILY, bundle_of(installed.tmp, "1.1.0"), "1.1.0")


def test_misuse_gets_actionable_errors(world: World, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="must not contain each other"):
        ModelRepository.create(tmp_path / "r2", tmp_path / "r2" / "keys")
    with pytest.raises(InvalidArgument, match=r"not 1\.2\.0"):
        world.repo.publish(FAMILY, bundle_of(tmp_path, "1.0.0"), "1.2.0")
    with pytest.raises(InvalidArgument, match="model version"):
        world.repo.publish(FAMILY, bundle_of(tmp_path, "1.0.0"), "1.0.0-rc1")
    world.publish("1.1.0")
    with pytest.raises(FailedPrecondition, match="not newer"):
        world.publish("1.0.0")
    (world.keys_dir / "snapshot.pem").chmod(0o644)
    with pytest.raises(FailedPrecondition, match="chmod 600"):
        world.reopen().publish(FAMILY, bundle_of(tmp_path, "1.2.0"), "1.2.0")


def test_a_new_repository_keeps_its_keys_private(world: World) -> None:
    keys = world.keys_dir
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    for role in ("root", "targets", "snapshot", "timestamp", *world.repo.families):
        assert stat.S_IMODE((keys / f"{role}.pem").stat().st_mode) == 0o600
    assert not list(world.repo_dir.rglob("*.pem"))
    # Version 1 of every role; the newest root is also root.json (the hub's trust anchor).
    meta = world.repo_dir / "metadata"
    assert (meta / "1.root.json").read_bytes() == world.repo.root_path.read_bytes()
    assert {world.repo.version(r) for r in ("root", "targets", "snapshot", FAMILY)} == {1}


def test_a_repository_is_created_once_and_opened_after(world: World, tmp_path: Path) -> None:
    with pytest.raises(AlreadyExists, match="use open"):
        ModelRepository.create(world.repo_dir, tmp_path / "other-keys")
    with pytest.raises(AlreadyExists, match="refusing to overwrite"):
        ModelRepository.create(tmp_path / "other-repo", world.keys_dir)
    with pytest.raises(NotFound, match="create one first"):
        ModelRepository.open(tmp_path / "nothing", tmp_path / "no-keys")
    for families in ((), ("comfort", "comfort"), ("local",), ("snapshot",)):
        with pytest.raises(InvalidArgument):
            ModelRepository.create(tmp_path / "r", tmp_path / "k", families)


def test_expiry_policy_is_kept_with_the_keys(tmp_path: Path) -> None:
    repo = ModelRepository.create(
        tmp_path / "repo", tmp_path / "keys", [FAMILY], expiry={"timestamp": timedelta(hours=2)}
    )
    policy = json.loads((tmp_path / "keys" / POLICY_FILE).read_text())
    assert policy["timestamp"] == 7200
    assert policy["delegated"] == timedelta(days=90).total_seconds()
    before = repo.version("timestamp")
    assert ModelRepository.open(tmp_path / "repo", tmp_path / "keys").refresh_timestamp() == (
        before + 1
    )
    with pytest.raises(InvalidArgument, match="must be positive"):
        ModelRepository.create(
            tmp_path / "r2", tmp_path / "k2", [FAMILY], expiry={"root": timedelta(0)}
        )


def test_renewing_a_family_republishes_snapshot_and_timestamp(world: World) -> None:
    versions = {r: world.repo.version(r) for r in (FAMILY, "snapshot", "timestamp")}
    assert world.repo.renew(FAMILY) == versions[FAMILY] + 1
    assert world.repo.version("snapshot") == versions["snapshot"] + 1
    assert world.repo.version("timestamp") == versions["timestamp"] + 1
    with pytest.raises(NotFound, match="not delegated"):
        world.repo.renew("thermostat")
    # The hub follows.
    updater = world.updater()
    updater.refresh()
    assert updater.latest(FAMILY) is None


def test_a_rotated_key_file_replaces_the_old_one(world: World) -> None:
    path = world.keys_dir / "snapshot.pem"
    old = path.read_bytes()
    keyid = world.repo.rotate_key("snapshot")
    assert world.repo.keyids("snapshot") == [keyid]
    assert path.read_bytes() != old
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not (world.keys_dir / "snapshot.pem.new").exists()
    # A fresh publisher process signs with the new key file.
    version = world.repo.version("snapshot")
    assert world.reopen().renew("snapshot") == version + 1
    # Putting the retired key back is caught before anything is signed with it.
    install_key(path, old)
    with pytest.raises(FailedPrecondition, match="not a key the repository trusts"):
        world.reopen().renew("snapshot")
