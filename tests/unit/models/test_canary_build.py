"""The default canary set of ``roost models publish`` (models/canary_build.py): held-out
rows with their true labels, so the shipped model passes it and a label-inverted copy
of it fails at stage (candidate_check), whatever that copy claims; a model it cannot be
built for is refused until the publisher opts out."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench.bad_models import bad_version, occupancy_copy
from models.canary import CANARY_FILE
from models.canary_build import (
    FLOOR,
    MARGIN,
    ROWS_PER_LABEL,
    CanaryUnavailable,
    attach_held_out_canary,
)
from models.manifest import load_manifest, shipped_models_dir
from services.kit.errors import FailedPrecondition
from services.update.candidate_check import check_candidate
from tests.support.shared_data import DATA_DIR, MISSING

needs_data = pytest.mark.skipif(DATA_DIR is None, reason=MISSING)


@needs_data
def test_the_shipped_model_passes_and_an_inverted_one_fails(tmp_path: Path) -> None:
    active = load_manifest(shipped_models_dir() / "occupancy")
    good = occupancy_copy(tmp_path, "1.1.0")
    manifest = attach_held_out_canary(good, DATA_DIR)
    assert manifest.canary is not None
    raw = json.loads((good / CANARY_FILE).read_text())
    # Class-balanced, from the held-out test split, the bar from the recorded accuracy.
    assert sorted(set(raw["labels"])) == ["occupied", "vacant"]
    assert raw["labels"].count("occupied") == raw["labels"].count("vacant") == ROWS_PER_LABEL
    assert raw["min_agreement"] == pytest.approx(active.metrics["test_accuracy"] - MARGIN, abs=1e-4)
    assert check_candidate(good, active).endswith(
        f"rows as expected (minimum {raw['min_agreement']:.0%})"
    )
    # The same rows and labels for a copy whose two outputs are swapped: it loads, fits
    # the schema and answers finite, and its canary catches it.
    inverted = bad_version(tmp_path, "label_inverted", "1.2.0")
    attach_held_out_canary(inverted, DATA_DIR)
    assert json.loads((inverted / CANARY_FILE).read_text()) == raw
    with pytest.raises(FailedPrecondition, match=r"canary: [0-9] of 50 rows as expected"):
        check_candidate(inverted, active)


def test_without_data_or_for_a_regressor_there_is_no_default(tmp_path: Path) -> None:
    comfort = tmp_path / "comfort"
    shutil.copytree(shipped_models_dir() / "comfort", comfort)
    with pytest.raises(CanaryUnavailable, match="no default canary for a regression model"):
        attach_held_out_canary(comfort, DATA_DIR)
    empty = tmp_path / "no-data"
    empty.mkdir()
    with pytest.raises(CanaryUnavailable, match="occupancy: no held-out data"):
        attach_held_out_canary(occupancy_copy(tmp_path, "1.1.0"), empty)
    assert FLOOR <= 1.0


@needs_data
def test_publish_attaches_it_by_default_and_no_canary_opts_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cli.main import main  # noqa: PLC0415 - the CLI only for this test

    repo, keys = tmp_path / "repo", tmp_path / "keys"
    where = ["--repo", str(repo), "--keys", str(keys), "--data-dir", str(DATA_DIR)]
    shipped = shipped_models_dir() / "occupancy"
    assert main(["models", "publish", str(shipped), *where, "--version", "1.1.0", "--init"]) == 0
    assert "canary: 50 held-out rows with their true labels" in capsys.readouterr().out
    assert not (shipped / CANARY_FILE).exists()  # the publisher's directory is untouched
    assert (
        main(["models", "publish", str(shipped), *where, "--version", "1.2.0", "--no-canary"]) == 0
    )
    assert "canary" not in capsys.readouterr().out
    comfort = str(shipped_models_dir() / "comfort")
    assert main(["models", "publish", comfort, *where, "--version", "1.1.0"]) == 2
    err = capsys.readouterr().err
    assert "no canary set: comfort: no default canary for a regression model" in err
    assert "--no-canary" in err
