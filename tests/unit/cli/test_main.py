"""The `roost` CLI: each command's happy path and its error for a wrong setup."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from cli.main import build_parser, main


def test_models_list_shows_the_shipped_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "occupancy" in out
    assert "classification" in out


def test_certs_init_then_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    certs = tmp_path / "certs"
    assert main(["certs", "init", "--dir", str(certs), "--hub-id", "test"]) == 0
    out = capsys.readouterr().out
    assert "created" in out
    for role in ("hub", "inference", "audit", "auditor", "admin"):
        assert f"CN={role}" in out
    assert (certs / "hub-key.pem").stat().st_mode & 0o077 == 0  # private keys are 0600
    assert main(["certs", "init", "--dir", str(certs)]) == 0
    assert "already present" in capsys.readouterr().out


def test_status_without_a_running_stack_says_how_to_start_one(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="make run"):
        main(["--home", str(tmp_path), "status"])


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["fly"])
    assert e.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_models_commands_take_the_data_location_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from models import tasks  # noqa: PLC0415

    (tmp_path / "occupancy").mkdir()
    seen: list[tuple[str, list[str]]] = []

    def recipe(task: str) -> Callable[[list[str]], int]:
        return lambda argv: seen.append((task, argv)) or 0

    monkeypatch.setattr(tasks, "evaluate_main", recipe)
    monkeypatch.setenv("ROOST_DATA_DIR", str(tmp_path))
    assert main(["models", "evaluate", "occupancy", "--data-dir", "/mine"]) == 0
    # Read once by the CLI and passed on; the user's own --data-dir comes later and wins.
    assert seen == [("occupancy", ["--data-dir", str(tmp_path), "--data-dir", "/mine"])]


def test_models_evaluate_without_the_data_exits_2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from models import datasets  # noqa: PLC0415

    monkeypatch.setattr(datasets, "DEFAULT_DATA_DIR", tmp_path / "absent")
    monkeypatch.setenv("ROOST_DATA_DIR", str(tmp_path / "empty"))
    assert main(["models", "evaluate", "occupancy"]) == 2
    assert "ROOST_DATA_DIR" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["simulate", "--port", "1884", "--speedup", "0", "--once"],
        ["--home", "x", "simulate", "--port", "1884", "--speedup", "0", "--once"],
        ["--home=x", "simulate", "--port", "1884", "--speedup", "0", "--once"],
    ],
)
def test_simulate_gets_its_options_as_the_readme_writes_them(
    argv: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[list[str]] = []

    def fake_main(args: list[str]) -> int:
        seen.append(args)
        return 0

    monkeypatch.setattr("cli.simulate.main", fake_main)
    assert main(argv) == 0
    assert seen == [["--port", "1884", "--speedup", "0", "--once"]]
