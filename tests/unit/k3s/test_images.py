"""Container images: one per role, two stages, non-root, exactly the role's extra, no torch."""

from __future__ import annotations

import re
import tomllib
from functools import cache

import pytest

from tests.support.k3s import ROOST_ROLES, ROOST_UID, ROOT


@cache
def _containerfile(role: str) -> str:
    return (ROOT / "containers" / f"{role}.Containerfile").read_text()


@pytest.mark.parametrize("role", ROOST_ROLES)
def test_containerfiles(role: str) -> None:
    text = _containerfile(role)
    assert f'ENTRYPOINT ["roost", "serve", "{role}"]' in text
    assert f"USER {ROOST_UID}:{ROOST_UID}" in text
    assert f'-c constraints.txt ".[{role}]"' in text, "installs exactly the role's extra"
    assert "--editable" not in text
    assert " -e " not in text
    stages = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    assert stages == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"], "two stages, same slim base"
    assert re.search(r"PYTHON_IMAGE=\S*python:3\.11-slim", text)
    final = text.split("\nFROM ${PYTHON_IMAGE}\n", 1)[1]
    assert "pip install" not in final, "no build step in the final stage"
    assert "apt-get" not in final, "no build tools in the final stage"
    assert not re.search(r"(amd64|arm64|x86_64|aarch64)\S*\.(whl|tar\.gz)", text)


def test_inference_image_has_no_torch() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    for role in ("hub", "inference", "audit", "update"):
        assert not any(d.startswith("torch") for d in extras[role]), role
        text = _containerfile(role)
        assert "TORCH_INDEX" not in text, role
        assert "--extra-index-url" not in text, role


@pytest.mark.parametrize("role", ROOST_ROLES)
def test_onnxruntime_telemetry_is_off_in_the_image(role: str) -> None:
    final = _containerfile(role).split("\nFROM ${PYTHON_IMAGE}\n", 1)[1]
    assert re.search(r"^\s+ORT_DISABLE_TELEMETRY=1\s*$", final, re.MULTILINE), role


def test_the_openvino_inference_image_swaps_the_runtime_only() -> None:
    stock = _containerfile("inference")
    text = (ROOT / "containers" / "inference-openvino.Containerfile").read_text()
    assert '-c constraints.txt ".[inference-openvino]"' in text
    assert 'ENTRYPOINT ["roost", "serve", "inference"]' in text
    assert "--platform linux/amd64 " in text, "onnxruntime-openvino ships x86-64 wheels only"
    final = text.split("\nFROM ${PYTHON_IMAGE}\n", 1)[1]
    assert re.search(r"^\s+ORT_DISABLE_TELEMETRY=1", final, re.MULTILINE)
    assert "ROOST_INFERENCE_EXECUTION_PROVIDERS=OpenVINOExecutionProvider," in final
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert extras["inference-openvino"] == ["onnxruntime-openvino==1.24.1"]
    assert not any(
        d.startswith(("onnxruntime>", "onnxruntime=", "torch"))
        for d in extras["inference-openvino"]
    )
    # Everything else is the stock image's, line for line.
    same = [line for line in stock.splitlines() if not line.startswith("#")]
    differ = [line for line in same if line not in text.splitlines()]
    assert len(differ) <= 6, differ
