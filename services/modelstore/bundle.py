"""Model bundles: one deterministic, uncompressed tar per model version.

A bundle holds exactly the files a model directory needs and nothing else::

    <name>-<version>.tar
      MODEL_CARD.md / card.md   the model card, when the directory has one
      manifest.json             name, version, sha256 of every variant (models.manifest)
      <name>.onnx               every file the manifest references (served + variants)
      <name>.int8.onnx

Members are sorted by name, regular files only, flat (no directories), with fixed
metadata (mtime 0, uid/gid 0, mode 0644, no user names), so packing the same model
directory twice yields byte-identical archives and therefore the same TUF target hash.

Trust: a bundle on its own proves nothing. Its bytes are authenticated by TUF (length and
sha256 in a delegated targets role, see ``cli.tuf_repo``); ``unpack_bundle``
then re-checks every ONNX file against the manifest inside, and refuses anything that is
not a plain, small, flat file. The helpers shared by publisher and hub (``TargetInfo``,
version parsing, target naming) live here too, so the hub never imports publisher code.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from models.manifest import MANIFEST_FILE, Manifest, ManifestError, load_manifest, parse_manifest
from services.kit.errors import InvalidArgument, ResourceExhausted

if TYPE_CHECKING:
    from tuf.api.metadata import TargetFile  # type: ignore[attr-defined]

# Model card names, in order of preference; every one present is shipped.
CARD_FILES = ("card.md", "MODEL_CARD.md")
# Home Assistant shows at most 255 characters of an update's release summary.
MAX_RELEASE_NOTES = 255
BUNDLE_SUFFIX = ".tar"
MAX_MEMBERS = 32
_MEMBER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_FAMILY_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_VERSION_RE = re.compile(r"^(0|[1-9]\d{0,8})(\.(0|[1-9]\d{0,8})){0,3}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 16


@dataclass(frozen=True)
class BundleInfo:
    """What ``pack_bundle`` wrote."""

    path: Path
    name: str
    version: str
    sha256: str
    size_bytes: int
    files: tuple[str, ...]
    sha256_manifest: str


@dataclass(frozen=True)
class TargetInfo:
    """One published bundle as the signed targets metadata describes it.

    ``path`` is the TUF target path ``<family>/<family>-<version>.tar``; ``length`` and
    ``sha256`` are the signed length and hash of the tar; ``model`` and
    ``sha256_manifest`` are the manifest's name and the sha256 of its manifest.json bytes;
    ``release_notes`` the publisher's signed summary of the release (its model card's
    first paragraph; empty for bundles published without one).
    """

    family: str
    version: str
    path: str
    length: int
    sha256: str
    model: str
    sha256_manifest: str
    release_notes: str = ""

    @classmethod
    def from_tuf(cls, family: str, target: TargetFile) -> TargetInfo:
        """Read a TUF ``TargetFile`` (missing custom fields become empty strings)."""
        custom = target.custom if isinstance(target.custom, dict) else {}
        return cls(
            family=family,
            version=str(custom.get("version", "")),
            path=target.path,
            length=target.length,
            sha256=str(target.hashes.get("sha256", "")),
            model=str(custom.get("model", "")),
            sha256_manifest=str(custom.get("sha256_manifest", "")),
            release_notes=str(custom.get("release_notes", ""))[:MAX_RELEASE_NOTES],
        )

    def problems(self) -> list[str]:
        """Why this entry is not a well-formed Roost bundle target (empty if it is)."""
        out: list[str] = []
        if not _VERSION_RE.fullmatch(self.version):
            out.append(f"custom version '{self.version}' is not a dotted numeric version")
        elif self.path != f"{self.family}/{self.family}-{self.version}{BUNDLE_SUFFIX}":
            out.append(f"path '{self.path}' does not match family and version")
        if not _SHA256_RE.fullmatch(self.sha256):
            out.append("no sha256 hash")
        if not _SHA256_RE.fullmatch(self.sha256_manifest):
            out.append("custom sha256_manifest is not a sha256 hex digest")
        if not self.model:
            out.append("custom model name is empty")
        return out


def check_family(family: str) -> str:
    if not _FAMILY_RE.fullmatch(family):
        raise InvalidArgument(
            f"model family '{family}' is invalid: use 1-32 lowercase letters, digits or '_', "
            "starting with a letter"
        )
    return family


def parse_version(version: str) -> tuple[int, ...]:
    """``"1.10.0"`` -> ``(1, 10)``: dotted non-negative integers, trailing zeros dropped,
    so tuples compare numerically ("1.10.0" > "1.9.0", "1.0" == "1.0.0")."""
    if not _VERSION_RE.fullmatch(version):
        raise InvalidArgument(
            f"model version '{version}' is invalid: use 1 to 4 dot-separated integers "
            "without leading zeros, e.g. 1.2.0"
        )
    parts = [int(p) for p in version.split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def target_path(family: str, version: str) -> str:
    """The TUF target path of a family's bundle: ``<family>/<family>-<version>.tar``."""
    check_family(family)
    parse_version(version)
    return f"{family}/{family}-{version}{BUNDLE_SUFFIX}"


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _bundle_files(model_dir: Path, manifest: Manifest) -> list[str]:
    names = {MANIFEST_FILE, *manifest.files()}
    names |= {c for c in CARD_FILES if (model_dir / c).is_file()}
    for name in names:
        if not _MEMBER_RE.fullmatch(name):
            raise InvalidArgument(
                f"{model_dir / MANIFEST_FILE}: file name '{name}' cannot be bundled; "
                "bundles hold flat file names (letters, digits, '.', '_', '-')"
            )
    return sorted(names)


def pack_bundle(model_dir: Path, out: Path) -> BundleInfo:
    """Write the deterministic bundle of ``model_dir`` to ``out`` (atomically).

    The manifest is loaded and every referenced file's sha256 checked first, so a
    bundle is never built from a broken model directory.
    """
    try:
        manifest = load_manifest(model_dir, verify_sha256=True)
    except ManifestError as e:
        raise InvalidArgument(f"cannot bundle {model_dir}: {e}") from e
    files = _bundle_files(model_dir, manifest)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with (
            os.fdopen(fd, "wb") as raw,
            tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar,
        ):
            for name in files:
                data = (model_dir / name).read_bytes()
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mtime = 0
                info.mode = 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.type = tarfile.REGTYPE
                tar.addfile(info, io.BytesIO(data))
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    data = out.read_bytes()
    return BundleInfo(
        path=out,
        name=manifest.name,
        version=manifest.version,
        sha256=_sha256_bytes(data),
        size_bytes=len(data),
        files=tuple(files),
        sha256_manifest=_sha256_bytes((model_dir / MANIFEST_FILE).read_bytes()),
    )


def _check_member(bundle: Path, member: tarfile.TarInfo, seen: set[str]) -> None:
    where = f"bundle {bundle.name}: member '{member.name}'"
    if member.issym() or member.islnk():
        raise InvalidArgument(f"{where} is a link; bundles contain regular files only")
    if member.isdev() or member.isfifo():
        raise InvalidArgument(f"{where} is a device or fifo; bundles contain regular files only")
    if not member.isreg():
        raise InvalidArgument(f"{where} is not a regular file; bundles are flat (no directories)")
    if member.name.startswith("/") or member.name.startswith("\\"):
        raise InvalidArgument(f"{where} has an absolute path; refusing to unpack")
    if ".." in member.name.replace("\\", "/").split("/"):
        raise InvalidArgument(f"{where} contains '..'; refusing to unpack")
    if not _MEMBER_RE.fullmatch(member.name):
        raise InvalidArgument(
            f"{where} is not a flat file name (letters, digits, '.', '_', '-'); refusing to unpack"
        )
    if member.name in seen:
        raise InvalidArgument(f"{where} appears twice; refusing to unpack")


def _copy_member(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> str:
    src = tar.extractfile(member)
    if src is None:  # pragma: no cover - regular files always have data
        raise InvalidArgument(f"member '{member.name}' has no data")
    h = hashlib.sha256()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as dst, src:
        remaining = member.size
        while remaining > 0:
            chunk = src.read(min(_CHUNK, remaining))
            if not chunk:
                raise InvalidArgument(f"member '{member.name}' is truncated")
            h.update(chunk)
            dst.write(chunk)
            remaining -= len(chunk)
    return h.hexdigest()


def _verify_contents(bundle: Path, dest: Path, hashes: dict[str, str]) -> Manifest:
    if MANIFEST_FILE not in hashes:
        raise InvalidArgument(f"bundle {bundle.name} has no {MANIFEST_FILE}")
    try:
        raw = json.loads((dest / MANIFEST_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"bundle {bundle.name}: {MANIFEST_FILE} is not valid JSON") from e
    if not isinstance(raw, dict):
        raise InvalidArgument(f"bundle {bundle.name}: {MANIFEST_FILE} must be a JSON object")
    try:
        manifest = parse_manifest(raw, where=f"bundle {bundle.name}: {MANIFEST_FILE}")
    except (ManifestError, KeyError, TypeError, ValueError) as e:
        raise InvalidArgument(f"bundle {bundle.name}: {e}") from e
    expected = manifest.files()
    for name, sha in sorted(expected.items()):
        if name not in hashes:
            raise InvalidArgument(
                f"bundle {bundle.name}: model file '{name}' named by the manifest is missing"
            )
        if hashes[name] != sha:
            raise InvalidArgument(
                f"bundle {bundle.name}: sha256 of '{name}' is {hashes[name]}, "
                f"the manifest says {sha}; the bundle is corrupt or tampered"
            )
    allowed = set(expected) | {MANIFEST_FILE, *CARD_FILES}
    extra = sorted(set(hashes) - allowed)
    if extra:
        raise InvalidArgument(
            f"bundle {bundle.name}: unexpected member(s) {extra}; a bundle holds only the "
            "manifest, the model card and the files the manifest references"
        )
    return manifest


def unpack_bundle(path: Path, dest: Path, *, max_bytes: int) -> Manifest:
    """Safely unpack the bundle at ``path`` into the new directory ``dest``.

    Refuses (``InvalidArgument``) absolute paths, ``..``, links, devices, directories,
    duplicate or unexpected members and any ONNX file whose sha256 differs from the
    manifest; refuses (``ResourceExhausted``) archives or contents larger than
    ``max_bytes``. On any error ``dest`` is removed again; it must not exist beforehand
    (or be an empty directory).
    """
    if max_bytes <= 0:
        raise InvalidArgument(f"max_bytes must be positive, got {max_bytes}")
    try:
        size = path.stat().st_size
    except FileNotFoundError as e:
        raise InvalidArgument(f"bundle {path} not found") from e
    if size > max_bytes:
        raise ResourceExhausted(
            f"bundle {path.name} is {size} bytes, more than the limit of {max_bytes}; "
            "raise max_bundle_bytes if the model really is that large"
        )
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise InvalidArgument(f"cannot unpack into {dest}: it exists and is not an empty directory")
    dest.mkdir(parents=True, exist_ok=True)
    try:
        hashes: dict[str, str] = {}
        total = 0
        try:
            tar = tarfile.open(path, mode="r:")  # noqa: SIM115 - closed by the with below
        except tarfile.TarError as e:
            raise InvalidArgument(
                f"bundle {path.name} is not an uncompressed tar archive ({e})"
            ) from e
        with tar:
            while True:
                try:
                    member = tar.next()
                except tarfile.TarError as e:
                    raise InvalidArgument(f"bundle {path.name} is corrupt ({e})") from e
                if member is None:
                    break
                if len(hashes) >= MAX_MEMBERS:
                    raise InvalidArgument(f"bundle {path.name} has more than {MAX_MEMBERS} members")
                _check_member(path, member, set(hashes))
                total += member.size
                if total > max_bytes:
                    raise ResourceExhausted(
                        f"bundle {path.name} unpacks to more than {max_bytes} bytes "
                        f"(at member '{member.name}'); refusing"
                    )
                hashes[member.name] = _copy_member(tar, member, dest / member.name)
        return _verify_contents(path, dest, hashes)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
