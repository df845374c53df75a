"""Model bundles: deterministic tars holding exactly the model, and an unpacker that
refuses unsafe members, wrong hashes and oversized archives."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from models.manifest import MANIFEST_FILE, load_manifest
from services.kit.errors import InvalidArgument, ResourceExhausted
from services.modelstore.bundle import pack_bundle, unpack_bundle
from tests.support.tuf_world import FAMILY, MAX_BUNDLE, bundle_of, model_dir


def test_bundle_is_deterministic_and_holds_exactly_the_model(tmp_path: Path) -> None:
    src = model_dir(tmp_path, "1.0.0")
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
    src = model_dir(tmp_path, "1.0.0")
    good = [(_info(n), (src / n).read_bytes()) for n in (MANIFEST_FILE, "occupancy.onnx")]
    path = _tar(tmp_path / "evil.tar", [*good, (member, b"x")])
    with pytest.raises(InvalidArgument, match=match):
        unpack_bundle(path, tmp_path / "out", max_bytes=MAX_BUNDLE)
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "evil").exists()


def test_unpack_checks_onnx_hashes_and_sizes(tmp_path: Path) -> None:
    src = model_dir(tmp_path, "1.0.0")
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
    bundle = bundle_of(tmp_path, "1.0.0")
    with pytest.raises(ResourceExhausted, match="more than the limit"):
        unpack_bundle(bundle, tmp_path / "out", max_bytes=1000)
    assert not (tmp_path / "out").exists()
