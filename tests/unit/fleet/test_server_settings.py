"""The ServerApp's run config: typed, checked, unknown keys refused."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from fleet.server_settings import ServerSettings

APP = Path(__file__).resolve().parents[3] / "fleet" / "app" / "pyproject.toml"


def test_the_app_defaults_are_valid_settings() -> None:
    cfg = tomllib.loads(APP.read_text())["tool"]["flwr"]["app"]["config"]
    s = ServerSettings.from_run_config(cfg)
    assert s == ServerSettings()  # pyproject and dataclass defaults agree
    assert s.report_file is None


def test_types_come_from_the_dataclass() -> None:
    s = ServerSettings.from_run_config({"rounds": 5.0, "clip-norm": 2, "report-path": "/x"})
    assert s.rounds == 5
    assert isinstance(s.clip_norm, float)
    assert s.report_file == Path("/x")


@pytest.mark.parametrize(
    "bad",
    [
        {"round": 3},  # a typo is not silently ignored
        {"min-participants": 5, "min-nodes": 4},
        {"secagg-threshold": 1},
        {"secagg-threshold": 5, "secagg-num-shares": 4},
        {"noise-multiplier": 0.0},
        {"clip-norm": float("inf")},
        {"delta": 0.0},
        {"base-version": "1.0.0.1"},  # a hub's local version is no fleet base
        {"base-version": "latest"},
    ],
)
def test_bad_settings_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ServerSettings.from_run_config(bad)
