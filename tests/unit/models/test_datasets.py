"""Where the shared data sets are (``models.datasets``): a parameter with a default and
one environment override, applied by entry points, never read by the loaders."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from models import datasets
from models.datasets import (
    DATA_DIR_ENV,
    DatasetMissing,
    add_data_dir_argument,
    appliances_path,
    data_dir_from_env,
    find_data_dir,
    load_occupancy,
    occupancy_path,
)
from models.routine.data import load_kasteren

MODELS = Path(datasets.__file__).resolve().parent


def _data_dir(root: Path) -> Path:
    (root / "occupancy").mkdir(parents=True)
    return root


@pytest.fixture
def no_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The default ../shared/data is absent."""
    monkeypatch.setattr(datasets, "DEFAULT_DATA_DIR", tmp_path / "absent")


@pytest.mark.usefixtures("no_default")
def test_the_configured_directory_is_used_when_it_holds_the_data(tmp_path: Path) -> None:
    configured = _data_dir(tmp_path / "data")
    assert find_data_dir(configured) == configured
    assert find_data_dir(None) is None
    assert find_data_dir(tmp_path / "empty") is None


def test_the_default_is_the_fallback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    default = _data_dir(tmp_path / "shared" / "data")
    monkeypatch.setattr(datasets, "DEFAULT_DATA_DIR", default)
    assert find_data_dir() == default
    assert find_data_dir(tmp_path / "empty") == default  # as $ROOST_DATA_DIR did before
    (tmp_path / "readme_only").mkdir()
    (tmp_path / "readme_only" / "README.md").write_text("data sets\n")
    assert find_data_dir(tmp_path / "readme_only") == tmp_path / "readme_only"


@pytest.mark.usefixtures("no_default")
def test_the_environment_override_comes_from_the_mapping_passed(tmp_path: Path) -> None:
    configured = _data_dir(tmp_path / "data")
    assert data_dir_from_env({DATA_DIR_ENV: str(configured)}) == configured
    assert data_dir_from_env({}) is None
    assert data_dir_from_env({DATA_DIR_ENV: ""}) is None


def test_loaders_without_a_data_directory_say_how_to_get_one() -> None:
    for load in (
        lambda: load_occupancy("test", None),
        lambda: occupancy_path("train", None),
        lambda: appliances_path(None),
        lambda: load_kasteren(None),
    ):
        with pytest.raises(DatasetMissing, match=DATA_DIR_ENV):
            load()


def test_a_data_directory_without_the_file_is_missing_data(tmp_path: Path) -> None:
    data_dir = _data_dir(tmp_path)
    with pytest.raises(DatasetMissing, match=r"datatest\.txt"):
        load_occupancy("test", data_dir)
    with pytest.raises(DatasetMissing, match="kasteren"):
        load_kasteren(data_dir)


def test_the_cli_option() -> None:
    import argparse  # noqa: PLC0415

    parser = argparse.ArgumentParser()
    add_data_dir_argument(parser)
    assert parser.parse_args([]).data_dir is None
    assert parser.parse_args(["--data-dir", "/d"]).data_dir == Path("/d")


def _sets_a_variable(tree: ast.AST, node: ast.Attribute) -> bool:
    """``os.environ[...] = ...``: a write (onnx_runtime turns telemetry off), not a read."""
    return any(
        isinstance(sub, ast.Subscript) and sub.value is node and isinstance(sub.ctx, ast.Store)
        for sub in ast.walk(tree)
    )


def test_no_module_of_models_reads_the_environment() -> None:
    offenders = []
    for path in sorted(MODELS.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            reads = isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv")
            if reads and not _sets_a_variable(tree, node):  # type: ignore[arg-type]
                offenders.append(f"{path.relative_to(MODELS)}:{node.lineno}")
    assert not offenders
