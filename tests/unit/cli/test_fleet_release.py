"""The fleet's release builder (``cli/fleet_release.py``): the DP global head on the base
trunk, exported deterministically, described without household values, signed into a TUF
repository a hub's TUF client accepts (on real processes: tests/integration/test_fleet_release.py)."""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from cli.fleet import ReleaseTarget, _publish_when_ended, _release_target
from cli.fleet_release import FleetRun, build_release, publish_run, read_run, release_version
from cli.fleet_server import run_id_of
from cli.stack import StackError
from models.export import run as run_onnx
from models.manifest import MANIFEST_FILE, load_manifest, shipped_models_dir
from services.kit.errors import FailedPrecondition, InvalidArgument, NotFound
from services.modelstore.bundle import pack_bundle
from services.personalization.federated_train import load_head
from services.personalization.onnx_roundtrip import base_model, parity_inputs
from tests.support.fleet_reports import shipped_head, write_report
from tests.support.tuf_world import FAMILY, World, install_key, install_latest, installed_world

BASE = shipped_models_dir() / "occupancy"
RUN = "4021973451977654321"


def fleet_run(tmp: Path, head: np.ndarray, participants: tuple[int, ...] = (4, 3, 2)) -> FleetRun:
    """A run whose rounds end at ``head`` (earlier rounds on the way there)."""
    heads = [head * (i + 1) / len(participants) for i in range(len(participants))]
    write_report(tmp / "rounds.jsonl", RUN, heads, participants)
    run = read_run(tmp / "rounds.jsonl", RUN)
    assert run is not None
    return run


def noisy_head(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (shipped_head() + rng.normal(0, 0.05, 66)).astype(np.float32)


def tree_digest(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


def test_the_same_head_gives_the_same_bytes_and_another_head_others(tmp_path: Path) -> None:
    run = fleet_run(tmp_path, noisy_head())
    a = build_release(run, BASE, tmp_path / "a", "1.0.1")
    b = build_release(run, BASE, tmp_path / "b", "1.0.1")
    assert tree_digest(a) == tree_digest(b)
    assert pack_bundle(a, tmp_path / "a.tar").sha256 == pack_bundle(b, tmp_path / "b.tar").sha256
    other = fleet_run(tmp_path / "o", noisy_head(seed=1))
    c = build_release(other, BASE, tmp_path / "c", "1.0.1")
    assert tree_digest(c)["occupancy.onnx"] != tree_digest(a)["occupancy.onnx"]


def test_the_exported_model_holds_the_head_and_agrees_with_torch(tmp_path: Path) -> None:
    run = fleet_run(tmp_path, noisy_head())
    head = run.head  # the last released round's, as the report has it
    out = build_release(run, BASE, tmp_path / "m", "1.0.1")
    inits = {
        i.name: numpy_helper.to_array(i)
        for i in onnx.load(str(out / "occupancy.onnx")).graph.initializer
    }
    weight, bias = inits["mlp.4.weight"], inits["mlp.4.bias"]
    assert np.array_equal(np.concatenate([weight.ravel(), bias.ravel()]), head)
    # The trunk is the base's, untouched.
    base = {
        i.name: numpy_helper.to_array(i)
        for i in onnx.load(str(BASE / "occupancy.onnx")).graph.initializer
    }
    assert np.array_equal(inits["mlp.0.weight"], base["mlp.0.weight"])
    # onnxruntime on the release == torch with the head loaded into the base model.
    model = base_model("occupancy", BASE / "occupancy.onnx")
    load_head(model, "occupancy", head)
    x = parity_inputs(model, 6, seed=3)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    got = run_onnx(out / "occupancy.onnx", x, "features", "probabilities")
    assert np.max(np.abs(got - want)) <= 1e-5
    # And it is not the base model: the head changed what it answers.
    shipped = run_onnx(BASE / "occupancy.onnx", x, "features", "probabilities")
    assert np.max(np.abs(got - shipped)) > 1e-3
    assert load_manifest(out).version == "1.0.1"  # hashes verified


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_head_is_refused_and_nothing_published(tmp_path: Path, bad: float) -> None:
    head = noisy_head()
    head[7] = bad
    run = fleet_run(tmp_path, head, participants=(2,))  # one round: the report holds `bad`
    assert not np.isfinite(run.head[7])
    with pytest.raises(InvalidArgument, match="not finite"):
        build_release(run, BASE, tmp_path / "m", "1.0.1")
    world = World(tmp_path / "w")
    with pytest.raises(InvalidArgument, match="not finite"):
        publish_run(run, BASE, world.repo_dir, world.keys_dir)
    assert world.repo.targets(FAMILY) == []


@pytest.mark.parametrize("size", [65, 67, 0])
def test_a_head_of_the_wrong_size_is_refused_at_build(tmp_path: Path, size: int) -> None:
    write_report(
        tmp_path / "r.jsonl", RUN, [np.ones(size, np.float32)], [2], head_size=max(size, 1)
    )
    run = read_run(tmp_path / "r.jsonl", RUN)
    assert run is not None
    with pytest.raises(InvalidArgument, match=f"{size} values, the occupancy head has 66"):
        build_release(run, BASE, tmp_path / "m", "1.0.1")
    assert not (tmp_path / "m" / MANIFEST_FILE).exists()


def test_a_base_that_is_not_the_runs_is_refused(tmp_path: Path) -> None:
    run = fleet_run(tmp_path, noisy_head())
    other = FleetRun(run.run, run.model, "1.1.0", run.ended, run.rounds)
    with pytest.raises(FailedPrecondition, match=r"trained the head of occupancy 1\.1\.0"):
        build_release(other, BASE, tmp_path / "m", "1.1.1")


def test_the_notes_say_where_it_came_from_and_carry_no_household_value(tmp_path: Path) -> None:
    head = noisy_head()
    run = fleet_run(tmp_path, head)
    out = build_release(run, BASE, tmp_path / "m", "1.0.1")
    notes = run.notes("1.0.1")
    assert len(notes) <= 240
    last = run.rounds[-1]
    for part in (
        f"fleet run {RUN}",
        "3 rounds",
        "2-4 hubs",
        f"epsilon {last.epsilon:.4g}",
        "delta 1e-05",
        "sigma 0.5",
        "C 1",
        "occupancy 1.0.0",
    ):
        assert part in notes, (part, notes)
    # Every number in the notes is one of the run's public parameters.
    allowed = {RUN, "3", "2", "4", f"{last.epsilon:.4g}", "1e-05", "0.5", "1", "1.0.0", "1.0.1"}
    assert set(re.findall(r"\d+(?:\.\d+)*(?:e-\d+)?", notes)) <= allowed, notes
    card = (out / "MODEL_CARD.md").read_text()
    # No head value (what the households' updates moved) in the card, in any usual spelling.
    for v in head:
        for spelled in (repr(float(v)), f"{float(v):.6f}", f"{float(v):.4f}"):
            assert spelled not in card, spelled
    # The manifest is the base's (public) but for what the release changes.
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    base = json.loads((BASE / MANIFEST_FILE).read_text())
    changed = {k for k in base.keys() | manifest.keys() if base.get(k) != manifest.get(k)}
    assert changed == {
        "version",
        "sha256",
        "variants",
        "metrics",
        "description",
        "training_data_sha256",
    }
    assert manifest["training_data_sha256"] == ""
    assert manifest["metrics"] == {
        "fleet_rounds": 3.0,
        "fleet_epsilon": round(last.epsilon, 6),
        "fleet_delta": 1e-05,
        "fleet_noise_multiplier": 0.5,
        "fleet_clip_norm": 1.0,
        "fleet_min_participants": 2.0,
    }
    assert (
        set(re.findall(r"\d+(?:\.\d+)*(?:e-\d+)?", manifest["description"].split("Head")[1]))
        <= allowed
    )
    assert card.splitlines()[2] == notes  # the card's first paragraph: the signed notes


def test_the_report_gives_one_run_once_it_ended(tmp_path: Path) -> None:
    report = tmp_path / "rounds.jsonl"
    write_report(report, "other", [np.ones(66, np.float32)], [4])
    assert read_run(report, RUN) is None  # not in the report (yet)
    s = write_report(report, RUN, [np.ones(66, np.float32) * 2, np.ones(66, np.float32)], [1, 3])
    run = read_run(report, RUN)
    assert run is not None
    assert [(r.round, r.participants) for r in run.rounds] == [(2, 3)]  # round 1: 1 < t
    assert np.array_equal(run.head, s.global_head)
    assert (run.model, run.base_version, run.ended) == ("occupancy", "1.0.0", "completed")
    lines = report.read_text().splitlines()
    report.write_text("\n".join(lines[:-1]) + "\n")  # the run's last line not written yet
    assert read_run(report, RUN) is None
    report.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:30])  # half written
    assert read_run(report, RUN) is None


def test_nothing_is_published_without_a_released_round(tmp_path: Path) -> None:
    write_report(tmp_path / "r.jsonl", RUN, [np.ones(66, np.float32)], [1], outcome="failed: X")
    run = read_run(tmp_path / "r.jsonl", RUN)
    assert run is not None
    assert run.rounds == ()
    world = World(tmp_path / "w")
    before = sorted(p.name for p in (world.repo_dir / "metadata").iterdir())
    assert publish_run(run, BASE, world.repo_dir, world.keys_dir) is None
    assert sorted(p.name for p in (world.repo_dir / "metadata").iterdir()) == before


@pytest.mark.parametrize(
    ("base", "published", "want"),
    [
        ("1.0.0", [], "1.0.1"),
        ("1.0.0", ["1.0.0", "1.0.1"], "1.0.2"),
        ("1.0.0", ["1.2"], "1.2.1"),
        ("1.0.0", ["1.0.0.7"], "1.0.1"),  # never a hub's local version x.y.z.n
        ("2", ["1.9.9"], "2.0.1"),
    ],
)
def test_the_version_is_the_next_patch_after_all(
    base: str, published: list[str], want: str
) -> None:
    assert release_version(base, published) == want


def test_a_hub_installs_it_through_tuf_and_a_second_run_comes_next(tmp_path: Path) -> None:
    world = installed_world(World(tmp_path))  # the hub runs 1.0.0 from this repository
    first = publish_run(
        fleet_run(tmp_path / "r1", noisy_head()), BASE, world.repo_dir, world.keys_dir
    )
    assert first is not None
    assert first.version == "1.0.1"
    assert f"fleet run {RUN}" in first.release_notes
    installed = install_latest(world)
    assert load_manifest(installed).version == "1.0.1"
    second = publish_run(
        fleet_run(tmp_path / "r2", noisy_head(2)), BASE, world.repo_dir, world.keys_dir
    )
    assert second is not None
    assert second.version == "1.0.2"


def test_a_foreign_signing_key_is_refused_by_the_publisher(tmp_path: Path) -> None:
    world, foreign = World(tmp_path / "fleet"), World(tmp_path / "foreign")
    install_key(world.keys_dir / f"{FAMILY}.pem", (foreign.keys_dir / f"{FAMILY}.pem").read_bytes())
    run = fleet_run(tmp_path, noisy_head())
    with pytest.raises(FailedPrecondition, match="is not a key the repository trusts"):
        publish_run(run, BASE, world.repo_dir, world.keys_dir)
    assert world.reopen().targets(FAMILY) == []


def test_the_run_id_is_what_flwr_run_printed() -> None:
    assert run_id_of("Loading project...\nSuccessfully started run 1234567890\n") == "1234567890"
    with pytest.raises(StackError, match="did not say which run"):
        run_id_of("Run failed")


def _serve_args(tmp_path: Path, **kw: object) -> argparse.Namespace:
    world = World(tmp_path)
    values: dict[str, object] = {
        "release_repo": world.repo_dir,
        "release_keys": world.keys_dir,
        "base_model": None,
    }
    return argparse.Namespace(**(values | kw))


def test_serve_checks_the_release_target_before_the_run(tmp_path: Path) -> None:
    run_config: dict[str, object] = {}
    target = _release_target(_serve_args(tmp_path / "a"), run_config)
    assert target.base_dir == BASE
    assert run_config == {"base-version": "1.0.0"}  # the run names the base it is built on
    with pytest.raises(InvalidArgument, match=r"not occupancy 1\.1\.0"):
        _release_target(_serve_args(tmp_path / "b"), {"base-version": "1.1.0"})
    with pytest.raises(InvalidArgument, match="needs --release-keys"):
        _release_target(_serve_args(tmp_path / "c", release_keys=None), {})
    with pytest.raises(NotFound, match="holds no model repository"):
        _release_target(_serve_args(tmp_path / "d", release_repo=tmp_path / "none"), {})


class _Superlink:
    def __init__(self, alive: bool) -> None:
        self._alive = alive

    def alive(self) -> bool:
        return self._alive


def _publish(tmp_path: Path, world: World, report: Path, alive: bool = True) -> None:
    stack = SimpleNamespace(procs={"superlink": _Superlink(alive)})
    target = ReleaseTarget(world.repo_dir, world.keys_dir, BASE)
    _publish_when_ended(target, report, RUN, stack, threading.Event())  # type: ignore[arg-type]


def test_serve_publishes_when_the_run_ends_and_only_then(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    world = World(tmp_path / "w")
    report = tmp_path / "rounds.jsonl"
    _publish(tmp_path, world, report, alive=False)  # the SuperLink died before the end
    assert world.reopen().targets(FAMILY) == []
    write_report(report, RUN, [np.ones(66, np.float32)], [1], outcome="failed: X")
    _publish(tmp_path, world, report)
    assert "with no released round: nothing published" in capsys.readouterr().out
    assert world.reopen().targets(FAMILY) == []
    report.unlink()
    write_report(report, RUN, [noisy_head()], [3])
    _publish(tmp_path, world, report)
    assert "ended (completed): published occupancy/occupancy-1.0.1.tar" in capsys.readouterr().out
    assert [t.version for t in world.reopen().targets(FAMILY)] == ["1.0.1"]
