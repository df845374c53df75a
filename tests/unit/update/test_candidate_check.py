"""Stage-time checks of a candidate: it loads, its graph matches its manifest and the
active model's contract, it runs finite, and its signed canary set comes out right."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from bench.bad_models import attach_shipped_canary, bad_version
from models.canary import attach_canary
from models.manifest import (
    MANIFEST_FILE,
    Manifest,
    ManifestError,
    load_manifest,
    shipped_models_dir,
)
from services.kit.errors import FailedPrecondition
from services.update.candidate_check import check_candidate
from tests.support.model_versions import occupancy_version


@pytest.fixture(scope="module")
def active() -> Manifest:
    return load_manifest(shipped_models_dir() / "occupancy")


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("wrong_schema", "input 'features' has shape ['batch', 7], the manifest says [batch, 6]"),
        ("fails_to_load", "it cannot be loaded (InvalidProtobuf"),
    ],
)
def test_a_candidate_that_cannot_serve_is_refused_with_the_reason(
    tmp_path: Path, active: Manifest, kind: str, reason: str
) -> None:
    with pytest.raises(FailedPrecondition) as e:
        check_candidate(bad_version(tmp_path, kind, "1.1.0"), active)
    assert str(e.value).startswith("candidate occupancy 1.1.0 refused: ")
    assert reason in str(e.value)


def test_a_good_candidate_passes_and_says_what_was_checked(
    tmp_path: Path, active: Manifest
) -> None:
    model = occupancy_version(tmp_path, "1.1.0")
    assert check_candidate(model, active) == (
        "loads; graph matches its manifest and active 1.0.0's contract; runs finite;"
        " no canary set in the release"
    )
    attach_shipped_canary(model)
    assert check_candidate(model, active).endswith("canary: 2 of 2 rows as expected (minimum 100%)")


def test_the_canary_set_catches_inverted_labels(tmp_path: Path, active: Manifest) -> None:
    model = bad_version(tmp_path, "label_inverted", "1.1.0")
    check_candidate(model, active)  # loads, right schema, finite: only the canary can tell
    attach_shipped_canary(model)
    with pytest.raises(FailedPrecondition, match=r"canary: 0 of 2 rows as expected"):
        check_candidate(model, active)


def test_nan_on_the_canary_is_refused(tmp_path: Path, active: Manifest) -> None:
    model = bad_version(tmp_path, "nan_outputs", "1.1.0")
    attach_shipped_canary(model)  # its occupied row has co2 950 ppm: NaN
    with pytest.raises(FailedPrecondition, match=r"canary: 1 of 2 rows answered NaN"):
        check_candidate(model, active)


def test_the_active_models_contract_is_kept(tmp_path: Path, active: Manifest) -> None:
    model = occupancy_version(tmp_path, "1.1.0")
    path = model / MANIFEST_FILE
    raw = json.loads(path.read_text())
    raw["output_labels"] = ["empty", "busy"]
    raw["feature_spec"] = "occupancy/v2"
    path.write_text(json.dumps(raw))
    with pytest.raises(FailedPrecondition) as e:
        check_candidate(model, active)
    assert "output labels ['empty', 'busy'] differ from active 1.0.0's" in str(e.value)
    assert "feature spec occupancy/v2 differs from active 1.0.0's occupancy/v1" in str(e.value)
    renamed = dataclasses.replace(
        active, input=dataclasses.replace(active.input, name="x"), version="0.9.0"
    )
    with pytest.raises(FailedPrecondition, match=r"differs from active 0\.9\.0's x float32"):
        check_candidate(occupancy_version(tmp_path / "b", "1.1.0"), renamed)


def test_a_tampered_canary_set_does_not_verify(tmp_path: Path) -> None:
    model = occupancy_version(tmp_path, "1.1.0")
    attach_shipped_canary(model)
    (model / "canary.json").write_text('{"inputs": []}')
    with pytest.raises(ManifestError, match=r"canary\.json: sha256"):
        load_manifest(model)


def test_a_canary_set_must_fit_the_model(tmp_path: Path) -> None:
    model = occupancy_version(tmp_path, "1.1.0")
    with pytest.raises(ManifestError, match=r"inputs\[0\] must be a list of 6 numbers"):
        attach_canary(model, [[1.0, 2.0]], ["occupied"])
    with pytest.raises(ManifestError, match="1 label\\(s\\) are not output labels"):
        attach_canary(model, [[0.0] * 6], ["maybe"])
