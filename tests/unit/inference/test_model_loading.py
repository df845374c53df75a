"""Model directories: manifests are checked; a broken model is skipped, not fatal.
And the serving roles never import torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from models.manifest import ManifestError, load_manifest, shipped_models_dir
from services.inference.registry import ModelRegistry
from tests.support.onnx_models import linear_model


def test_shipped_models_load() -> None:
    registry = ModelRegistry.from_directory(shipped_models_dir())
    assert "occupancy" in [m.manifest.name for m in registry.all()]
    registry.close()


def test_tampered_artifact_is_rejected(tmp_path: Path) -> None:
    linear_model(tmp_path / "good", [1.0, 2.0])
    bad = tmp_path / "bad"
    linear_model(bad, [1.0, 2.0])
    raw = json.loads((bad / "manifest.json").read_text())
    raw["name"] = "tampered"
    (bad / "manifest.json").write_text(json.dumps(raw))
    with (bad / "linear.onnx").open("ab") as f:
        f.write(b"\x00")
    with pytest.raises(ManifestError, match="sha256"):
        load_manifest(bad)
    registry = ModelRegistry.from_directory(tmp_path)
    assert [m.manifest.name for m in registry.all()] == ["linear"]
    registry.close()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.pop("input"), "missing field 'input'"),
        (lambda m: m["input"].update(dtype="float16"), "unsupported dtype"),
        (lambda m: m["input"].update(shape=[3]), "2 feature names for last dimension 3"),
        (lambda m: m.update(task_kind="clustering"), "unknown task_kind"),
        (lambda m: m.update(baseline=[0.0]), "baseline has 1 values"),
    ],
)
def test_malformed_manifests(tmp_path: Path, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    linear_model(tmp_path, [1.0, 2.0])
    raw = json.loads((tmp_path / "manifest.json").read_text())
    edit(raw)
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match=message):
        load_manifest(tmp_path)


def test_not_json(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(ManifestError, match="invalid JSON"):
        load_manifest(tmp_path)


def test_serving_roles_never_import_torch() -> None:
    code = (
        "import sys, hub.app, cli.main, cli.simulate, services.inference.__main__, "
        "services.audit.__main__, models.features, models.manifest, models.occupancy.data\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_execution_providers_come_from_configuration() -> None:
    from services.inference.config import InferenceConfig  # noqa: PLC0415
    from services.kit.config import load_config  # noqa: PLC0415

    assert InferenceConfig().execution_providers == ("CPUExecutionProvider",)
    env = {"ROOST_INFERENCE_EXECUTION_PROVIDERS": "OpenVINOExecutionProvider, CPUExecutionProvider"}
    loaded = load_config(InferenceConfig, "inference", env=env)
    assert loaded.execution_providers == ("OpenVINOExecutionProvider", "CPUExecutionProvider")
