"""No mirror can freeze or flood the TUF client: a real HTTP mirror drips, stalls or
sends endless data, and every refresh ends with a precise error, the hub unchanged."""

from __future__ import annotations

import hashlib
import re
import tracemalloc
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata, MetaFile, Timestamp  # type: ignore[attr-defined]

from models.manifest import load_manifest
from services.kit.errors import InvalidArgument, Unavailable
from services.update.fetchers import FetchLimits
from tests.support.mirrors import serve_mirror
from tests.support.tuf_world import FAMILY, World, installed_world, refused, signer_from

FAST_FAIL = FetchLimits(
    deadline_seconds=60, min_bytes_per_second=1024, grace_seconds=1, stall_seconds=10
)


@pytest.fixture
def installed(tmp_path: Path) -> World:
    return installed_world(World(tmp_path))


def _slow(world: World, limits: FetchLimits, drip_seconds: float, match: str) -> str:
    world.publish("1.1.0")
    before = world.hub_state()
    with serve_mirror(world.repo_dir) as mirror:
        mirror.drip = re.compile(r"timestamp\.json$")
        mirror.drip_seconds = drip_seconds
        updater = world.updater(mirror.url, limits=limits)
        with pytest.raises(Unavailable, match=match) as exc:
            updater.refresh()
    assert world.hub_state() == before
    assert load_manifest(world.models / FAMILY).version == "1.0.0"
    return str(exc.value)


def test_a_dripping_mirror_is_refused_for_its_rate(installed: World) -> None:
    msg = _slow(installed, FAST_FAIL, 0.5, "below the minimum rate of 1024 bytes/s")
    assert "too slow while fetching metadata/timestamp.json" in msg
    assert "the running model is unchanged" in msg


def test_a_dripping_mirror_is_refused_at_the_overall_deadline(installed: World) -> None:
    limits = FetchLimits(
        deadline_seconds=2, min_bytes_per_second=0, grace_seconds=1, stall_seconds=10
    )
    _slow(installed, limits, 0.5, r"not done within the 2 s deadline of a fetch")


def test_a_stalled_mirror_is_refused(installed: World) -> None:
    limits = FetchLimits(stall_seconds=1, grace_seconds=100, min_bytes_per_second=0)
    _slow(installed, limits, 30, r"no data for 1 s \(stalled mirror\)")


def test_a_huge_declared_snapshot_is_refused_without_buffering_it(installed: World) -> None:
    """An attacker with the timestamp key declares a 400 MiB snapshot and the mirror
    sends endless data for it: the hub stops at max_metadata_bytes."""
    installed.publish("1.1.0")
    meta = installed.repo_dir / "metadata"
    ts = Metadata[Timestamp].from_bytes((meta / "timestamp.json").read_bytes())
    ts.signed.version += 1
    version = ts.signed.snapshot_meta.version + 1
    ts.signed.snapshot_meta = MetaFile(version, 400 << 20, {"sha256": hashlib.sha256().hexdigest()})
    ts.signatures.clear()
    ts.sign(signer_from(installed.keys_dir / "timestamp.pem"))
    (meta / "timestamp.json").write_bytes(ts.to_bytes())
    with serve_mirror(installed.repo_dir) as mirror:
        mirror.endless = re.compile(rf"/{version}\.snapshot\.json$")
        updater = installed.updater(mirror.url, max_metadata_bytes=1 << 20)
        tracemalloc.start()
        try:
            msg = refused(installed, "too_large", updater.refresh, "exceeds its size limit")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert f"metadata/{version}.snapshot.json" in msg
    assert "max_metadata_bytes=1048576" in msg
    assert peak < 16 << 20, f"refresh held {peak} bytes for a refused snapshot"
    assert mirror.sent < 32 << 20  # the hub hung up instead of reading on


def test_limits_are_checked() -> None:
    with pytest.raises(InvalidArgument, match="deadline_seconds must be > 0"):
        FetchLimits(deadline_seconds=0)
    with pytest.raises(InvalidArgument, match="max_metadata_bytes must be positive"):
        FetchLimits(max_metadata_bytes=0)
