"""The on-disk model registry: verified versions, slot rules, and crash safety (a
writer SIGKILLed mid-activation always leaves a loadable active model)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from models.manifest import MANIFEST_FILE, load_manifest, shipped_models_dir
from services.kit.errors import FailedPrecondition, InvalidArgument, NotFound
from services.modelstore.reader import STATE_FILE, SlotState
from services.modelstore.registry import Registry


def model_version(tmp: Path, version: str, name: str = "occupancy") -> Path:
    """A copy of the shipped model directory with another version number."""
    src = shipped_models_dir() / name
    dst = tmp / f"{name}-{version}"
    shutil.copytree(src, dst)
    raw = json.loads((dst / MANIFEST_FILE).read_text())
    raw["version"] = version
    (dst / MANIFEST_FILE).write_text(json.dumps(raw))
    return dst


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "registry")


def test_bootstrap_installs_and_activates_every_shipped_model(registry: Registry) -> None:
    names = registry.bootstrap(shipped_models_dir())
    assert sorted(names) == ["anomaly", "comfort", "occupancy", "routine"]
    assert registry.models() == sorted(names)
    for name in names:
        state = registry.state(name)
        assert state.active == load_manifest(shipped_models_dir() / name).version
        assert state.candidate is None
        assert registry.load(name, state.active).name == name
        assert registry.versions(name)[0].source == "shipped"
    # Second start: nothing to do.
    assert registry.bootstrap(shipped_models_dir()) == []


def test_versions_are_verified_and_immutable(registry: Registry, tmp_path: Path) -> None:
    v2 = model_version(tmp_path, "2.0.0")
    info = registry.add_version(v2, "tuf")
    assert (info.version, info.source) == ("2.0.0", "tuf")
    assert registry.add_version(v2, "tuf") == info  # idempotent
    other = model_version(tmp_path / "b", "2.0.0")
    (other / "occupancy.onnx").write_bytes(b"not the same model")
    with pytest.raises(InvalidArgument, match="sha256"):
        registry.add_version(other, "tuf")  # does not verify against its own manifest
    raw = json.loads((other / MANIFEST_FILE).read_text())
    shutil.copy(shipped_models_dir() / "routine" / "routine.onnx", other / "occupancy.onnx")
    raw["sha256"] = load_manifest(shipped_models_dir() / "routine").sha256
    for variant in raw["variants"].values():
        if variant["file"] == "occupancy.onnx":
            variant["sha256"] = raw["sha256"]
    (other / MANIFEST_FILE).write_text(json.dumps(raw))
    with pytest.raises(FailedPrecondition, match="immutable"):
        registry.add_version(other, "tuf")
    with pytest.raises(NotFound):
        registry.info("occupancy", "9.9.9")


def test_the_rollout_lifecycle(registry: Registry, tmp_path: Path) -> None:
    registry.bootstrap(shipped_models_dir())
    v1 = registry.state("occupancy").active
    registry.add_version(model_version(tmp_path, "2.0.0"), "tuf")
    with pytest.raises(FailedPrecondition, match="no candidate"):
        registry.promote("occupancy")
    s = registry.stage("occupancy", "2.0.0")
    assert (s.candidate, s.stage) == ("2.0.0", "staged")
    with pytest.raises(FailedPrecondition, match="shadow or A/B"):
        registry.promote("occupancy")
    assert registry.start_rollout("occupancy", "shadow").stage == "shadow"
    with pytest.raises(InvalidArgument, match="share"):
        registry.start_rollout("occupancy", "ab", 1.5)
    s = registry.start_rollout("occupancy", "ab", 0.25)
    assert (s.stage, s.share) == ("ab", 0.25)
    s = registry.promote("occupancy")
    assert (s.active, s.previous, s.candidate, s.stage) == ("2.0.0", v1, None, "none")
    s = registry.rollback("occupancy")
    assert (s.active, s.previous) == (v1, None)
    with pytest.raises(FailedPrecondition, match="no previous"):
        registry.rollback("occupancy")


def test_rollback_of_a_candidate_keeps_active(registry: Registry, tmp_path: Path) -> None:
    registry.bootstrap(shipped_models_dir())
    registry.add_version(model_version(tmp_path, "2.0.0"), "tuf")
    registry.stage("occupancy", "2.0.0")
    registry.start_rollout("occupancy", "shadow")
    s = registry.rollback("occupancy")
    assert (s.active, s.candidate, s.stage) == ("1.0.0", None, "none")


def test_older_signed_versions_are_not_staged(registry: Registry, tmp_path: Path) -> None:
    registry.add_version(model_version(tmp_path, "2.0.0"), "tuf")
    registry.activate("occupancy", "2.0.0")
    registry.add_version(model_version(tmp_path, "1.5.0"), "tuf")
    with pytest.raises(FailedPrecondition, match="not newer"):
        registry.stage("occupancy", "1.5.0")


def test_generation_counts_changes_and_bad_state_is_refused(registry: Registry) -> None:
    registry.bootstrap(shipped_models_dir())
    assert registry.state("occupancy").generation == 1
    path = registry.root / "occupancy" / STATE_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), "stage": "shadow"}))
    with pytest.raises(FailedPrecondition, match="inconsistent"):
        registry.state("occupancy")
    path.write_text("{")
    with pytest.raises(FailedPrecondition, match="not a valid registry state"):
        registry.state("occupancy")
    with pytest.raises(InvalidArgument, match="model_name"):
        registry.state("../etc")


_WRITER = """
import sys
from pathlib import Path
from services.modelstore.registry import Registry
r = Registry(Path(sys.argv[1]))
versions = sys.argv[2:]
print("ready", flush=True)
i = 0
while True:
    r.activate("occupancy", versions[i % len(versions)])
    i += 1
    print(i, flush=True)
"""


def test_a_writer_killed_mid_activation_leaves_a_loadable_model(
    registry: Registry, tmp_path: Path
) -> None:
    registry.bootstrap(shipped_models_dir())
    versions = ["1.0.0"]
    for v in ("1.1.0", "1.2.0"):
        registry.add_version(model_version(tmp_path, v), "tuf")
        versions.append(v)
    rng = random.Random(7)
    seen: set[str] = set()
    for _ in range(12):
        proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(registry.root), *versions],
            stdout=subprocess.PIPE,
            cwd=Path(__file__).resolve().parents[3],
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
        # Kill it while it is at work: after a random number of activations it reported
        # (it has already gone on to the next one).
        for _ in range(rng.randrange(0, 12)):
            assert proc.stdout.readline()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        state = registry.state("occupancy")
        assert isinstance(state, SlotState)
        assert state.active in versions
        seen.add(state.active)
        registry.load("occupancy", state.active)  # complete and sha256-verified
        leftovers = list((registry.root / "occupancy").glob(".*.tmp"))
        assert len(leftovers) <= 1  # at most the temp file of the killed write
    assert len(seen) >= 2  # the kills landed at different points


def test_crash_leftovers_are_swept_and_nothing_else(registry: Registry) -> None:
    """What writers killed mid-write leave (simulated: kill -9 leaves exactly these)
    goes at start; the versions and slots stay."""
    registry.bootstrap(shipped_models_dir())
    root = registry.root
    stage = root / ".stage-k9x2"
    (stage / "occupancy").mkdir(parents=True)
    (stage / "occupancy" / "model.onnx").write_bytes(b"\0" * (1 << 20))
    (root / ".local-77").mkdir()
    versions = root / "occupancy" / "versions"
    (versions / ".1.2.0.abc.tmp").mkdir()
    (versions / ".1.2.0.abc.tmp" / "manifest.json").write_text("{}")
    (root / "occupancy" / f".{STATE_FILE}.123.tmp").write_text("{}")
    before = registry.state("occupancy")
    kept = sorted(p.name for p in versions.iterdir() if not p.name.startswith("."))
    assert registry.sweep() == (4, (1 << 20) + 2 + 2)
    assert [p.name for p in root.iterdir() if p.name.startswith(".")] == []
    assert sorted(p.name for p in versions.iterdir()) == kept
    assert [p.name for p in (root / "occupancy").glob(f".{STATE_FILE}.*")] == []
    assert registry.state("occupancy") == before
    assert registry.sweep() == (0, 0)


def test_restore_puts_the_slots_back_and_moves_the_generation_on(
    registry: Registry, tmp_path: Path
) -> None:
    registry.bootstrap(shipped_models_dir())
    registry.add_version(model_version(tmp_path, "1.1.0"), "tuf")
    registry.stage("occupancy", "1.1.0")
    before = registry.start_rollout("occupancy", "shadow")
    promoted = registry.promote("occupancy")
    assert promoted.active == "1.1.0"
    restored = registry.restore("occupancy", before)
    assert restored.generation == promoted.generation + 1
    assert restored == SlotState(**{**before.__dict__, "generation": restored.generation})


def test_the_last_rolled_back_version_is_remembered_until_staged_again(
    registry: Registry, tmp_path: Path
) -> None:
    """The update entity skips a rolled-back version: the registry names it (a withdrawn
    candidate, or the active a rollback replaced), through promotions of others, until
    the owner stages that same version again."""
    registry.bootstrap(shipped_models_dir())
    for v in ("2.0.0", "3.0.0"):
        registry.add_version(model_version(tmp_path, v), "tuf")
    registry.stage("occupancy", "2.0.0")
    registry.start_rollout("occupancy", "ab", 0.25)
    assert registry.rollback("occupancy").rolled_back == "2.0.0"
    # Survives a reload (it is in state.json) and staging another version.
    assert registry.state("occupancy").rolled_back == "2.0.0"
    registry.stage("occupancy", "3.0.0")
    registry.start_rollout("occupancy", "shadow")
    assert registry.promote("occupancy").rolled_back == "2.0.0"
    # Rolling back the active version names it.
    s = registry.rollback("occupancy")
    assert (s.active, s.rolled_back) == ("1.0.0", "3.0.0")
    # The owner staging it again clears it.
    assert registry.stage("occupancy", "3.0.0").rolled_back is None


def test_a_state_file_of_an_earlier_version_still_reads(registry: Registry) -> None:
    registry.bootstrap(shipped_models_dir())
    path = registry.root / "occupancy" / STATE_FILE
    doc = json.loads(path.read_text())
    doc.pop("rolled_back")
    path.write_text(json.dumps(doc))
    assert registry.state("occupancy").rolled_back is None
