"""Signed model updates on the hub: bundle -> TUF repository -> hub client.

Every attack test starts from a hub that has refreshed and installed occupancy 1.0.0,
then lets the "mirror" (the repository directory the hub reads) misbehave, and checks
that the hub refuses with a precise ``UpdateRefused`` *and* that its trusted metadata
and installed model are byte-for-byte unchanged.
"""

from __future__ import annotations

import shutil
import threading
from datetime import UTC, datetime, timedelta
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner  # type: ignore[attr-defined]
from tuf.api.metadata import Metadata, Root, Timestamp  # type: ignore[attr-defined]

from cli.tuf_repo import DEFAULT_FAMILIES
from models.manifest import load_manifest
from services.kit.errors import FailedPrecondition, InvalidArgument, NotFound
from services.modelstore.bundle import parse_version
from services.update.tuf_client import ModelUpdater, UpdateRefused, check_newer
from tests.support.tuf_world import (
    FAMILY,
    MAX_BUNDLE,
    World,
    bundle_of,
    forge,
    install_latest,
    installed_world,
    refused,
    signer_from,
    tree,
)


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


@pytest.fixture
def installed(world: World) -> World:
    """The hub trusts the repository state after publishing 1.0.0 and runs 1.0.0."""
    return installed_world(world)


# -- happy paths ---------------------------------------------------------------------------


def test_publish_refresh_latest_install(world: World) -> None:
    first = world.publish("1.9.0")
    second = world.publish("1.10.0")  # numeric-aware: 1.10.0 is the newer
    assert second.path == "occupancy/occupancy-1.10.0.tar"
    assert second.model == FAMILY
    assert len(second.sha256_manifest) == 64
    assert [t.version for t in world.repo.targets(FAMILY)] == ["1.9.0", "1.10.0"]

    updater = world.updater()
    updater.refresh()
    assert updater.families() == sorted(DEFAULT_FAMILIES)
    assert updater.targets(FAMILY) == [first, second]
    assert updater.latest(FAMILY) == second
    assert updater.latest("comfort") is None

    tar = updater.download(second)
    assert tar.read_bytes() == world.target_file(second).read_bytes()
    installed = updater.install(second, world.models)
    manifest = load_manifest(installed)
    assert (manifest.name, manifest.version) == (FAMILY, "1.10.0")
    assert (installed / "MODEL_CARD.md").is_file()
    # Trusted metadata was committed: versioned root chain and the verified roles.
    meta = world.hub / "metadata"
    assert (meta / "root_history" / "1.root.json").is_file()
    assert {"timestamp.json", "snapshot.json", "targets.json", "occupancy.json"} <= {
        p.name for p in meta.iterdir()
    }
    # A second hub process refreshes from the committed state (nothing new).
    again = world.updater()
    again.refresh()
    assert again.latest(FAMILY) == second
    # The publisher reopens the repository with its key files from disk.
    third = world.reopen().publish(FAMILY, bundle_of(world.tmp, "1.11.0"), "1.11.0")
    later = world.updater()
    later.refresh()
    assert later.latest(FAMILY) == third
    assert load_manifest(later.install(third, world.models)).version == "1.11.0"


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_install_over_http(world: World) -> None:
    world.publish("1.0.0")
    handler = partial(_QuietHandler, directory=str(world.repo_dir))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        installed = install_latest(world, url)
        assert load_manifest(installed).version == "1.0.0"
        world.publish("1.1.0")
        assert load_manifest(install_latest(world, url)).version == "1.1.0"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# -- attacks -------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["flip", "truncate", "other-bundle"])
def test_1_replaced_target_bytes_are_refused(installed: World, how: str) -> None:
    target = installed.publish("1.1.0")
    path = installed.target_file(target)
    data = path.read_bytes()
    if how == "flip":
        data = data[:2000] + bytes([data[2000] ^ 1]) + data[2001:]
    elif how == "truncate":
        data = data[:-512]
    else:  # a validly built bundle of another model, same length class
        data = bundle_of(installed.tmp, "1.0.0").read_bytes()[: len(data)]
    path.write_bytes(data)
    updater = installed.updater()
    updater.refresh()  # metadata is fine; the bundle is not
    latest = updater.latest(FAMILY)
    assert latest == target
    msg = refused(
        installed,
        "hash_mismatch",
        lambda: updater.install(target, installed.models),
        "does not match the length/hash",
    )
    assert "targets/occupancy/" in msg
    assert not list((installed.hub / "cache" / "bundles").glob(f"*{target.version}*"))


@pytest.mark.parametrize("role", ["targets", FAMILY])
def test_2_metadata_signed_by_a_wrong_key_is_refused(installed: World, role: str) -> None:
    # The attacker holds the online snapshot/timestamp keys but not the role's key.
    bundle = bundle_of(installed.tmp, "1.2.0") if role == FAMILY else None
    version = forge(installed, role, CryptoSigner.generate_ed25519(), bundle)
    msg = refused(installed, "signature", installed.updater().refresh, "is not signed by")
    assert f"metadata/{version}.{role}.json" in msg


def test_2_unsigned_family_metadata_is_refused(installed: World) -> None:
    forge(installed, FAMILY, None, bundle_of(installed.tmp, "1.2.0"))
    refused(installed, "signature", installed.updater().refresh, r"signed by 0/1")
    # The publisher tool refuses to snapshot it, too.
    with pytest.raises(FailedPrecondition, match="refusing to snapshot"):
        installed.reopen().update_snapshot()


def test_3_metadata_rollback_is_refused(installed: World) -> None:
    old = installed.tmp / "old-mirror"
    shutil.copytree(installed.repo_dir, old)
    installed.publish("1.1.0")
    installed.updater().refresh()  # the hub has seen the newer timestamp/snapshot
    # Replay of the whole older repository state.
    msg = refused(installed, "rollback", installed.updater(old).refresh, "unexpected version")
    assert "metadata/timestamp.json" in msg
    assert "timestamp version" in msg
    # A stolen timestamp key re-signs a *newer* timestamp that points at the old snapshot.
    signer = signer_from(installed.keys_dir / "timestamp.pem")
    ts = Metadata[Timestamp].from_bytes((old / "metadata" / "timestamp.json").read_bytes())
    ts.signed.version = installed.repo.version("timestamp") + 1
    ts.sign(signer)
    (old / "metadata" / "timestamp.json").write_bytes(ts.to_bytes())
    msg = refused(installed, "rollback", installed.updater(old).refresh, "snapshot version")
    assert "rollback" in msg


def test_4_freeze_expired_timestamp_is_refused(installed: World) -> None:
    past = datetime.now(UTC) - timedelta(hours=1)
    installed.repo.refresh_timestamp(expires=past)
    msg = refused(
        installed,
        "expired",
        installed.updater().refresh,
        r"timestamp metadata expired at .*Z \(freeze attack or stale repository\)",
    )
    assert past.strftime("%Y-%m-%dT%H:%M") in msg
    installed.repo.refresh_timestamp()  # the publisher recovers; so does the hub
    installed.updater().refresh()


@pytest.mark.parametrize("role", ["snapshot", FAMILY])
def test_5_mix_and_match_is_refused(installed: World, role: str) -> None:
    old_version = installed.repo.version(role)
    old_bytes = installed.metadata(f"{old_version}.{role}.json").read_bytes()
    installed.publish("1.1.0")
    new_version = installed.repo.version(role)
    assert new_version > old_version
    # The new timestamp (and snapshot) combined with the older role file under the new name.
    installed.metadata(f"{new_version}.{role}.json").write_bytes(old_bytes)
    msg = refused(installed, "hash_mismatch", installed.updater().refresh, "mix-and-match attack")
    assert f"metadata/{new_version}.{role}.json" in msg


def test_6_oversized_target_and_metadata_are_refused(installed: World) -> None:
    target = installed.publish("1.1.0")
    path = installed.target_file(target)
    path.write_bytes(path.read_bytes() + b"\0" * 4096)  # endless data
    updater = installed.updater()
    updater.refresh()
    refused(
        installed,
        "too_large",
        lambda: updater.install(target, installed.models),
        r"targets/occupancy/.*exceeds its size limit",
    )
    # Metadata without a signed length is capped by the configured maximum.
    ts = installed.metadata("timestamp.json")
    size = len(ts.read_bytes())
    refused(
        installed,
        "too_large",
        installed.updater(max_metadata_bytes=size - 1).refresh,
        r"metadata/timestamp\.json exceeds its size limit",
    )
    ts.write_bytes(ts.read_bytes() + b" " * 20000)  # beyond ngclient's 16 KiB default
    refused(installed, "too_large", installed.updater().refresh, "timestamp.json exceeds")


@pytest.mark.parametrize("role", [FAMILY, "targets"])
def test_7_key_rotation(installed: World, role: str) -> None:
    old_pem = (installed.keys_dir / f"{role}.pem").read_bytes()
    old_keyids = installed.repo.keyids(role)
    new_keyid = installed.repo.rotate_key(role)
    assert installed.repo.keyids(role) == [new_keyid] != old_keyids
    assert (installed.keys_dir / f"{role}.pem").stat().st_mode & 0o777 == 0o600
    installed.publish("1.1.0")
    assert load_manifest(install_latest(installed)).version == "1.1.0"
    # Whoever still holds the retired key can no longer sign for the role.
    old_signer = CryptoSigner(load_pem_private_key(old_pem, None))
    assert old_signer.public_key.keyid in old_keyids
    bundle = bundle_of(installed.tmp, "1.2.0") if role == FAMILY else None
    forge(installed, role, old_signer, bundle)
    before = installed.hub_state()
    with pytest.raises(UpdateRefused, match="is not signed by") as exc:
        installed.updater().refresh()
    assert exc.value.reason == "signature"
    assert installed.hub_state() == before
    assert load_manifest(installed.models / FAMILY).version == "1.1.0"


def test_7_root_rotation_is_followed_and_forged_roots_refused(installed: World) -> None:
    retired_root = signer_from(installed.keys_dir / "root.pem")
    installed.repo.rotate_key("root")
    installed.repo.rotate_key("timestamp")
    installed.repo.rotate_key("root")
    assert installed.repo.version("root") == 4
    installed.publish("1.1.0")
    # The hub still bootstraps from root v1 and walks 2 -> 3 -> 4.
    assert load_manifest(install_latest(installed)).version == "1.1.0"
    history = installed.hub / "metadata" / "root_history"
    assert sorted(p.name for p in history.iterdir()) == [f"{v}.root.json" for v in (1, 2, 3, 4)]
    # A root v5 signed with the retired root key (listing attacker keys) is refused.
    root_md = Metadata[Root].from_bytes(installed.metadata("4.root.json").read_bytes())
    rogue = CryptoSigner.generate_ed25519()
    for role in ("root", "targets", "snapshot", "timestamp"):
        for keyid in list(root_md.signed.roles[role].keyids):
            root_md.signed.revoke_key(keyid, role)
        root_md.signed.add_key(rogue.public_key, role)
    root_md.signed.version = 5
    root_md.sign(retired_root)
    root_md.sign(rogue, append=True)
    installed.metadata("5.root.json").write_bytes(root_md.to_bytes())
    before = installed.hub_state()
    with pytest.raises(UpdateRefused, match=r"metadata/5\.root\.json is not signed") as exc:
        installed.updater().refresh()
    assert exc.value.reason == "signature"
    assert installed.hub_state() == before


def test_8_validly_signed_older_version_is_refused(world: World) -> None:
    old = world.publish("1.0.0")
    world.publish("1.1.0")
    updater = world.updater()
    updater.refresh()
    latest = updater.latest(FAMILY)
    assert latest is not None
    updater.install(latest, world.models)
    before = tree(world.models)
    for target in (old, latest):  # older, then equal: both signed, both refused
        with pytest.raises(UpdateRefused, match=r"is not newer than the installed 1\.1\.0") as e:
            updater.install(target, world.models)
        assert e.value.reason == "not_newer"
    with pytest.raises(FailedPrecondition, match="version rollback"):
        check_newer(FAMILY, "1.0.0", "1.1.0")
    assert tree(world.models) == before
    check_newer(FAMILY, "1.10.0", "1.9.0")
    check_newer(FAMILY, "1.0.0", None)
    with pytest.raises(UpdateRefused):
        check_newer(FAMILY, "1.0", "1.0.0")
    assert parse_version("1.10.0") > parse_version("1.9.0")


def test_signed_metadata_must_match_the_bundle_manifest(installed: World) -> None:
    # Validly signed by the family key, but the custom sha256_manifest is wrong.
    forge(
        installed,
        FAMILY,
        signer_from(installed.keys_dir / f"{FAMILY}.pem"),
        bundle_of(installed.tmp, "1.2.0"),
    )
    updater = installed.updater()
    updater.refresh()
    target = updater.latest(FAMILY)
    assert target is not None
    assert target.version == "1.2.0"
    refused(
        installed,
        "manifest_mismatch",
        lambda: updater.install(target, installed.models),
        "differs from the signed sha256_manifest",
    )


# -- misuse --------------------------------------------------------------------------------


def test_misuse_of_the_client_gets_actionable_errors(world: World, tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match="call refresh"):
        world.updater().latest(FAMILY)
    with pytest.raises(NotFound, match="trusted root"):
        ModelUpdater(
            tmp_path / "m",
            tmp_path / "c",
            world.repo_dir,
            trusted_root=tmp_path / "nope.json",
            max_bundle_bytes=MAX_BUNDLE,
        )
    with pytest.raises(InvalidArgument, match="http"):
        world.updater("ftp://example.org/repo")


def test_leftovers_of_interrupted_fetches_are_swept(installed: World) -> None:
    """A refresh or download killed mid-way (kill -9) leaves a metadata staging copy and
    a ``.part`` bundle; the next start removes them and nothing it trusts."""
    staging = installed.hub / ".metadata.k9x2"
    staging.mkdir()
    (staging / "timestamp.json").write_text("{}")
    part = installed.hub / "cache" / "bundles" / ".occupancy-1.1.0.tar.abc.part"
    part.write_bytes(b"\0" * (1 << 20))
    before = installed.hub_state()
    updater = installed.updater()
    assert updater.sweep() == 2
    assert not staging.exists()
    assert not part.exists()
    assert installed.hub_state() == before
    assert updater.sweep() == 0
    updater.refresh()
