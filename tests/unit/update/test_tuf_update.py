"""Signed model updates end to end: bundle -> TUF repository -> hub client.

Every attack test starts from a hub that has refreshed and installed occupancy 1.0.0,
then lets the "mirror" (the repository directory the hub reads) misbehave, and checks
that the hub refuses with a precise ``UpdateRefused`` *and* that its trusted metadata
and installed model are byte-for-byte unchanged.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner  # type: ignore[attr-defined]
from tuf.api.metadata import (  # type: ignore[attr-defined]
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)

from cli.tuf_repo import DEFAULT_FAMILIES, ModelRepository
from models.manifest import MANIFEST_FILE, load_manifest, shipped_models_dir
from services.kit.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from services.modelstore.bundle import TargetInfo, pack_bundle, parse_version, unpack_bundle
from services.update.tuf_client import ModelUpdater, UpdateRefused, check_newer

MAX_BUNDLE = 1 << 20
FAMILY = "occupancy"


# -- fixtures ------------------------------------------------------------------------------


def _model_dir(tmp: Path, version: str) -> Path:
    """A copy of the shipped occupancy model whose manifest says ``version``."""
    dst = tmp / "src" / f"{FAMILY}-{version}"
    if not dst.exists():
        shutil.copytree(shipped_models_dir() / FAMILY, dst)
        raw = json.loads((dst / MANIFEST_FILE).read_text())
        raw["version"] = version
        (dst / MANIFEST_FILE).write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")
    return dst


def _bundle(tmp: Path, version: str) -> Path:
    out = tmp / "bundles" / f"{FAMILY}-{version}.tar"
    if not out.exists():
        pack_bundle(_model_dir(tmp, version), out)
    return out


def _tree(root: Path) -> dict[str, bytes | str]:
    """Every file (bytes) and symlink (target) below ``root``."""
    out: dict[str, bytes | str] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = os.readlink(p)
        elif p.is_file():
            out[rel] = p.read_bytes()
    return out


def _key(path: Path) -> CryptoSigner:
    return CryptoSigner(load_pem_private_key(path.read_bytes(), None))


def _install_key(path: Path, pem: bytes) -> None:
    path.write_bytes(pem)
    path.chmod(0o600)


def _forge(world: World, role: str, signer: CryptoSigner | None, bundle: Path | None = None) -> int:
    """An attacker holding the online snapshot and timestamp keys publishes the next
    version of ``role`` signed by ``signer`` (unsigned if None), optionally listing
    ``bundle`` as occupancy 1.2.0. Returns the forged role version."""
    meta = world.repo_dir / "metadata"
    version = world.repo.version(role)
    md = Metadata[Targets].from_bytes((meta / f"{version}.{role}.json").read_bytes())
    md.signed.version = version + 1
    if bundle is not None:
        target = TargetFile.from_file("occupancy/occupancy-1.2.0.tar", str(bundle))
        target.unrecognized_fields["custom"] = {
            "version": "1.2.0",
            "model": FAMILY,
            "sha256_manifest": "0" * 64,
        }
        md.signed.targets[target.path] = target
        dest = world.repo_dir / "targets" / FAMILY / f"{target.hashes['sha256']}.{FAMILY}-1.2.0.tar"
        shutil.copy(bundle, dest)
    md.signatures.clear()
    if signer is not None:
        md.sign(signer)
    data = md.to_bytes()
    (meta / f"{version + 1}.{role}.json").write_bytes(data)

    snap_version = world.repo.version("snapshot")
    snap = Metadata[Snapshot].from_bytes((meta / f"{snap_version}.snapshot.json").read_bytes())
    snap.signed.version = snap_version + 1
    snap.signed.meta[f"{role}.json"] = MetaFile(
        version + 1, len(data), {"sha256": hashlib.sha256(data).hexdigest()}
    )
    snap.sign(_key(world.keys_dir / "snapshot.pem"))
    snap_data = snap.to_bytes()
    (meta / f"{snap_version + 1}.snapshot.json").write_bytes(snap_data)

    ts = Metadata[Timestamp].from_bytes((meta / "timestamp.json").read_bytes())
    ts.signed.version += 1
    ts.signed.snapshot_meta = MetaFile(
        snap_version + 1, len(snap_data), {"sha256": hashlib.sha256(snap_data).hexdigest()}
    )
    ts.sign(_key(world.keys_dir / "timestamp.pem"))
    (meta / "timestamp.json").write_bytes(ts.to_bytes())
    return version + 1


class World:
    """A publisher repository (served as a local directory) and one hub."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.repo_dir = tmp / "repo"
        self.keys_dir = tmp / "keys"
        self.repo = ModelRepository.create(self.repo_dir, self.keys_dir, DEFAULT_FAMILIES)
        self.hub = tmp / "hub"
        self.hub.mkdir()
        # What the integrator installs: root v1, outside the hub's metadata directory.
        self.trusted_root = self.hub / "trusted-root.json"
        shutil.copy(self.repo.root_path, self.trusted_root)
        self.models = self.hub / "models"

    def publish(self, version: str) -> TargetInfo:
        return self.repo.publish(FAMILY, _bundle(self.tmp, version), version)

    def reopen(self) -> ModelRepository:
        self.repo = ModelRepository.open(self.repo_dir, self.keys_dir)
        return self.repo

    def updater(self, source: str | Path | None = None, **kw: Any) -> ModelUpdater:
        return ModelUpdater(
            self.hub / "metadata",
            self.hub / "cache",
            source if source is not None else self.repo_dir,
            trusted_root=self.trusted_root,
            max_bundle_bytes=MAX_BUNDLE,
            **kw,
        )

    def hub_state(self) -> dict[str, dict[str, bytes | str]]:
        return {"metadata": _tree(self.hub / "metadata"), "models": _tree(self.models)}

    def target_file(self, target: TargetInfo) -> Path:
        return self.repo_dir / "targets" / FAMILY / f"{target.sha256}.{FAMILY}-{target.version}.tar"

    def metadata(self, name: str) -> Path:
        return self.repo_dir / "metadata" / name


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


@pytest.fixture
def installed(world: World) -> World:
    """The hub trusts the repository state after publishing 1.0.0 and runs 1.0.0."""
    world.publish("1.0.0")
    updater = world.updater()
    updater.refresh()
    target = updater.latest(FAMILY)
    assert target is not None
    updater.install(target, world.models)
    assert load_manifest(world.models / FAMILY).version == "1.0.0"
    return world


def _refused(world: World, reason: str, action: Callable[[], object], match: str) -> str:
    """``action`` raises UpdateRefused(reason) matching ``match``; hub state untouched."""
    before = world.hub_state()
    with pytest.raises(UpdateRefused, match=match) as exc:
        action()
    assert exc.value.reason == reason, str(exc.value)
    assert "the running model is unchanged" in str(exc.value)
    assert world.hub_state() == before
    assert load_manifest(world.models / FAMILY).version == "1.0.0"
    return str(exc.value)


def _install_latest(world: World, source: str | Path | None = None) -> Path:
    updater = world.updater(source)
    updater.refresh()
    target = updater.latest(FAMILY)
    assert target is not None
    return updater.install(target, world.models)


# -- bundles -------------------------------------------------------------------------------


def test_bundle_is_deterministic_and_holds_exactly_the_model(tmp_path: Path) -> None:
    src = _model_dir(tmp_path, "1.0.0")
    a = pack_bundle(src, tmp_path / "a.tar")
    os.utime(src / "occupancy.onnx", (1, 1))  # mtimes never leak into the archive
    b = pack_bundle(src, tmp_path / "b.tar")
    assert a.path.read_bytes() == b.path.read_bytes()
    assert a.sha256 == b.sha256
    assert (a.name, a.version) == (FAMILY, "1.0.0")
    with tarfile.open(a.path) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names) == list(a.files)
    assert set(names) == {"MODEL_CARD.md", MANIFEST_FILE, "occupancy.onnx", "occupancy.int8.onnx"}
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.isreg() for m in members)
    manifest = unpack_bundle(a.path, tmp_path / "out", max_bytes=MAX_BUNDLE)
    assert manifest.version == "1.0.0"
    load_manifest(tmp_path / "out")  # every hash checks out


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def _info(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


@pytest.mark.parametrize(
    ("member", "match"),
    [
        (_info("/etc/evil"), "absolute path"),
        (_info("../evil"), r"contains '\.\.'"),
        (_info("sub/../../evil"), r"contains '\.\.'"),
        (_info("evil", tarfile.SYMTYPE, "/etc/passwd"), "is a link"),
        (_info("evil", tarfile.LNKTYPE, "manifest.json"), "is a link"),
        (_info("evil", tarfile.CHRTYPE), "device"),
        (_info("evil", tarfile.DIRTYPE), "not a regular file"),
        (_info("sub/evil"), "not a flat file name"),
    ],
)
def test_unpack_refuses_unsafe_members(tmp_path: Path, member: tarfile.TarInfo, match: str) -> None:
    src = _model_dir(tmp_path, "1.0.0")
    good = [(_info(n), (src / n).read_bytes()) for n in (MANIFEST_FILE, "occupancy.onnx")]
    path = _tar(tmp_path / "evil.tar", [*good, (member, b"x")])
    with pytest.raises(InvalidArgument, match=match):
        unpack_bundle(path, tmp_path / "out", max_bytes=MAX_BUNDLE)
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "evil").exists()


def test_unpack_checks_onnx_hashes_and_sizes(tmp_path: Path) -> None:
    src = _model_dir(tmp_path, "1.0.0")
    names = (MANIFEST_FILE, "occupancy.onnx", "occupancy.int8.onnx")
    files = {n: (src / n).read_bytes() for n in names}
    files["occupancy.int8.onnx"] = files["occupancy.int8.onnx"][:-1] + b"\0"
    path = _tar(tmp_path / "t.tar", [(_info(n), d) for n, d in files.items()])
    with pytest.raises(InvalidArgument, match=r"sha256 of 'occupancy\.int8\.onnx'"):
        unpack_bundle(path, tmp_path / "out", max_bytes=MAX_BUNDLE)
    del files["occupancy.int8.onnx"]
    path = _tar(tmp_path / "m.tar", [(_info(n), d) for n, d in files.items()])
    with pytest.raises(InvalidArgument, match="missing"):
        unpack_bundle(path, tmp_path / "out", max_bytes=MAX_BUNDLE)
    bundle = _bundle(tmp_path, "1.0.0")
    with pytest.raises(ResourceExhausted, match="more than the limit"):
        unpack_bundle(bundle, tmp_path / "out", max_bytes=1000)
    assert not (tmp_path / "out").exists()


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
    third = world.reopen().publish(FAMILY, _bundle(world.tmp, "1.11.0"), "1.11.0")
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
        installed = _install_latest(world, url)
        assert load_manifest(installed).version == "1.0.0"
        world.publish("1.1.0")
        assert load_manifest(_install_latest(world, url)).version == "1.1.0"
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
        data = _bundle(installed.tmp, "1.0.0").read_bytes()[: len(data)]
    path.write_bytes(data)
    updater = installed.updater()
    updater.refresh()  # metadata is fine; the bundle is not
    latest = updater.latest(FAMILY)
    assert latest == target
    msg = _refused(
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
    bundle = _bundle(installed.tmp, "1.2.0") if role == FAMILY else None
    version = _forge(installed, role, CryptoSigner.generate_ed25519(), bundle)
    msg = _refused(installed, "signature", installed.updater().refresh, "is not signed by")
    assert f"metadata/{version}.{role}.json" in msg


def test_2_unsigned_family_metadata_is_refused(installed: World) -> None:
    _forge(installed, FAMILY, None, _bundle(installed.tmp, "1.2.0"))
    _refused(installed, "signature", installed.updater().refresh, r"signed by 0/1")
    # The publisher tool refuses to snapshot it, too.
    with pytest.raises(FailedPrecondition, match="refusing to snapshot"):
        installed.reopen().update_snapshot()


def test_publisher_refuses_a_wrong_key_file(installed: World) -> None:
    _install_key(
        installed.keys_dir / f"{FAMILY}.pem", CryptoSigner.generate_ed25519().private_bytes
    )
    with pytest.raises(FailedPrecondition, match="not a key the repository trusts"):
        installed.reopen().publish(FAMILY, _bundle(installed.tmp, "1.1.0"), "1.1.0")


def test_3_metadata_rollback_is_refused(installed: World) -> None:
    old = installed.tmp / "old-mirror"
    shutil.copytree(installed.repo_dir, old)
    installed.publish("1.1.0")
    installed.updater().refresh()  # the hub has seen the newer timestamp/snapshot
    # Replay of the whole older repository state.
    msg = _refused(installed, "rollback", installed.updater(old).refresh, "unexpected version")
    assert "metadata/timestamp.json" in msg
    assert "timestamp version" in msg
    # A stolen timestamp key re-signs a *newer* timestamp that points at the old snapshot.
    signer = _key(installed.keys_dir / "timestamp.pem")
    ts = Metadata[Timestamp].from_bytes((old / "metadata" / "timestamp.json").read_bytes())
    ts.signed.version = installed.repo.version("timestamp") + 1
    ts.sign(signer)
    (old / "metadata" / "timestamp.json").write_bytes(ts.to_bytes())
    msg = _refused(installed, "rollback", installed.updater(old).refresh, "snapshot version")
    assert "rollback" in msg


def test_4_freeze_expired_timestamp_is_refused(installed: World) -> None:
    past = datetime.now(UTC) - timedelta(hours=1)
    installed.repo.refresh_timestamp(expires=past)
    msg = _refused(
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
    msg = _refused(installed, "hash_mismatch", installed.updater().refresh, "mix-and-match attack")
    assert f"metadata/{new_version}.{role}.json" in msg


def test_6_oversized_target_and_metadata_are_refused(installed: World) -> None:
    target = installed.publish("1.1.0")
    path = installed.target_file(target)
    path.write_bytes(path.read_bytes() + b"\0" * 4096)  # endless data
    updater = installed.updater()
    updater.refresh()
    _refused(
        installed,
        "too_large",
        lambda: updater.install(target, installed.models),
        r"targets/occupancy/.*exceeds its size limit",
    )
    # Metadata without a signed length is capped by the configured maximum.
    ts = installed.metadata("timestamp.json")
    size = len(ts.read_bytes())
    _refused(
        installed,
        "too_large",
        installed.updater(max_metadata_bytes=size - 1).refresh,
        r"metadata/timestamp\.json exceeds its size limit",
    )
    ts.write_bytes(ts.read_bytes() + b" " * 20000)  # beyond ngclient's 16 KiB default
    _refused(installed, "too_large", installed.updater().refresh, "timestamp.json exceeds")


@pytest.mark.parametrize("role", [FAMILY, "targets"])
def test_7_key_rotation(installed: World, role: str) -> None:
    old_pem = (installed.keys_dir / f"{role}.pem").read_bytes()
    old_keyids = installed.repo.keyids(role)
    new_keyid = installed.repo.rotate_key(role)
    assert installed.repo.keyids(role) == [new_keyid] != old_keyids
    assert (installed.keys_dir / f"{role}.pem").stat().st_mode & 0o777 == 0o600
    installed.publish("1.1.0")
    assert load_manifest(_install_latest(installed)).version == "1.1.0"
    # Whoever still holds the retired key can no longer sign for the role.
    old_signer = CryptoSigner(load_pem_private_key(old_pem, None))
    assert old_signer.public_key.keyid in old_keyids
    bundle = _bundle(installed.tmp, "1.2.0") if role == FAMILY else None
    _forge(installed, role, old_signer, bundle)
    before = installed.hub_state()
    with pytest.raises(UpdateRefused, match="is not signed by") as exc:
        installed.updater().refresh()
    assert exc.value.reason == "signature"
    assert installed.hub_state() == before
    assert load_manifest(installed.models / FAMILY).version == "1.1.0"


def test_7_root_rotation_is_followed_and_forged_roots_refused(installed: World) -> None:
    retired_root = _key(installed.keys_dir / "root.pem")
    installed.repo.rotate_key("root")
    installed.repo.rotate_key("timestamp")
    installed.repo.rotate_key("root")
    assert installed.repo.version("root") == 4
    installed.publish("1.1.0")
    # The hub still bootstraps from root v1 and walks 2 -> 3 -> 4.
    assert load_manifest(_install_latest(installed)).version == "1.1.0"
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
    before = _tree(world.models)
    for target in (old, latest):  # older, then equal: both signed, both refused
        with pytest.raises(UpdateRefused, match=r"is not newer than the installed 1\.1\.0") as e:
            updater.install(target, world.models)
        assert e.value.reason == "not_newer"
    with pytest.raises(FailedPrecondition, match="version rollback"):
        check_newer(FAMILY, "1.0.0", "1.1.0")
    assert _tree(world.models) == before
    check_newer(FAMILY, "1.10.0", "1.9.0")
    check_newer(FAMILY, "1.0.0", None)
    with pytest.raises(UpdateRefused):
        check_newer(FAMILY, "1.0", "1.0.0")
    assert parse_version("1.10.0") > parse_version("1.9.0")


def test_signed_metadata_must_match_the_bundle_manifest(installed: World) -> None:
    # Validly signed by the family key, but the custom sha256_manifest is wrong.
    _forge(
        installed,
        FAMILY,
        _key(installed.keys_dir / f"{FAMILY}.pem"),
        _bundle(installed.tmp, "1.2.0"),
    )
    updater = installed.updater()
    updater.refresh()
    target = updater.latest(FAMILY)
    assert target is not None
    assert target.version == "1.2.0"
    _refused(
        installed,
        "manifest_mismatch",
        lambda: updater.install(target, installed.models),
        "differs from the signed sha256_manifest",
    )


# -- misuse --------------------------------------------------------------------------------


def test_misuse_gets_actionable_errors(world: World, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="must not contain each other"):
        ModelRepository.create(tmp_path / "r2", tmp_path / "r2" / "keys")
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
    with pytest.raises(InvalidArgument, match=r"not 1\.2\.0"):
        world.repo.publish(FAMILY, _bundle(tmp_path, "1.0.0"), "1.2.0")
    with pytest.raises(InvalidArgument, match="model version"):
        world.repo.publish(FAMILY, _bundle(tmp_path, "1.0.0"), "1.0.0-rc1")
    world.publish("1.1.0")
    with pytest.raises(FailedPrecondition, match="not newer"):
        world.publish("1.0.0")
    (world.keys_dir / "snapshot.pem").chmod(0o644)
    with pytest.raises(FailedPrecondition, match="chmod 600"):
        world.reopen().publish(FAMILY, _bundle(tmp_path, "1.2.0"), "1.2.0")
