"""``roost models``: paged answers of the update service are read to the end, each page
token passed back exactly as the service issued it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from cli import models
from cli.main import _models_repo_env, main
from cli.support import CliError
from models.manifest import load_manifest, shipped_models_dir
from roost.common.v1 import common_pb2
from roost.update.v1 import update_service_pb2 as pb
from services.update.tuf_client import ModelUpdater


def test_every_page_is_read_with_the_tokens_unchanged(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pages = {
        "": (["occupancy", "comfort"], "opaque-1=="),
        "opaque-1==": (["anomaly"], "opaque-2=="),
        "opaque-2==": (["routine"], ""),
    }
    seen: list[str] = []

    def call(args: argparse.Namespace, method: str, request: Any, timeout: float = 120) -> Any:
        assert method == "CheckForUpdates"
        seen.append(request.page_token)
        names, token = pages[request.page_token]
        updates = [
            pb.AvailableUpdate(
                model=common_pb2.ModelRef(name=n, version="2.0.0"), length_bytes=2048
            )
            for n in names
        ]
        return pb.CheckForUpdatesResponse(updates=updates, next_page_token=token)

    monkeypatch.setattr(models, "_call", call)
    assert models.cmd_check(argparse.Namespace()) == 0
    assert seen == ["", "opaque-1==", "opaque-2=="]
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == ["occupancy", "comfort", "anomaly", "routine"]
    assert out[0] == "occupancy  2.0.0      2 kB available"


def test_publish_cuts_a_version_and_the_shipped_one_is_not_signed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo, keys = tmp_path / "repo", tmp_path / "keys"
    shipped = str(shipped_models_dir() / "occupancy")
    where = ["--repo", str(repo), "--keys", str(keys)]
    where += ["--no-canary"]  # the default canary needs the shared data: test_canary_build
    assert main(["models", "publish", shipped, *where, "--init"]) == 0
    assert main(["models", "publish", shipped, "--version", "1.1.0", *where]) == 0
    assert "published occupancy/occupancy-1.1.0.tar" in capsys.readouterr().out
    assert main(["models", "publish", shipped, "--version", "latest", *where]) == 2
    assert "--version:" in capsys.readouterr().err
    # A hub trusting the repository sees both, verified (1.1.0's manifest says 1.1.0).
    updater = ModelUpdater(
        tmp_path / "hub" / "metadata",
        tmp_path / "hub" / "cache",
        repo,
        trusted_root=repo / "metadata" / "root.json",
        max_bundle_bytes=1 << 20,
    )
    updater.refresh()
    latest = updater.latest("occupancy")
    assert latest is not None
    assert [t.version for t in updater.targets("occupancy")] == ["1.0.0", "1.1.0"]
    assert load_manifest(updater.install(latest, tmp_path / "models")).version == "1.1.0"
    assert models._SOURCES[pb.SOURCE_SHIPPED] == "shipped"
    assert models._SOURCES[pb.SOURCE_TUF] == "signed"


def test_roost_run_points_the_update_service_at_a_repository(tmp_path: Path) -> None:
    root = tmp_path / "root.json"
    ns = argparse.Namespace(models_repo="http://mirror:8000/", trusted_root=root)
    assert _models_repo_env(ns) == {
        "ROOST_UPDATE_TUF_SOURCE": "http://mirror:8000/",
        "ROOST_UPDATE_TUF_TRUSTED_ROOT": str(root.resolve()),
    }
    assert _models_repo_env(argparse.Namespace(models_repo=None, trusted_root=None)) == {}
    with pytest.raises(CliError, match="--models-repo needs --trusted-root"):
        _models_repo_env(argparse.Namespace(models_repo="repo", trusted_root=None))
