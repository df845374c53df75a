"""onnxruntime starts with its telemetry off, in every process that loads it.

The variable only counts if it is set before ``import onnxruntime`` (the runtime reads it
once, at import). A fresh interpreter records the variable at the moment onnxruntime is
first imported, for each entry point that loads the runtime; and the same probe shows a
plain ``import onnxruntime`` would have started it with telemetry on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

PROBE = """
import importlib, json, os, sys

seen = {}

class Watch:
    def find_spec(self, name, path=None, target=None):
        if name == "onnxruntime" and "at_import" not in seen:
            seen["at_import"] = os.environ.get("ORT_DISABLE_TELEMETRY")
        return None

sys.meta_path.insert(0, Watch())
importlib.import_module(sys.argv[1])
print(json.dumps({"loaded": "onnxruntime" in sys.modules, **seen}))
"""

# Every module a Roost process enters through that ends up loading onnxruntime.
ENTRY_POINTS = [
    "services.inference.__main__",
    "services.personalization.onnx_roundtrip",  # what the training child loads
    "models.export",
    "models.occupancy.train",
    "bench.e2e",
]


def probe(module: str) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run(
        [sys.executable, "-c", PROBE, module],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_telemetry_is_off_before_onnxruntime_starts(module: str) -> None:
    seen = probe(module)
    assert seen["loaded"], f"{module} no longer loads onnxruntime: update ENTRY_POINTS"
    assert seen["at_import"] == "1", seen


def test_the_probe_sees_a_plain_import_start_with_telemetry_on() -> None:
    assert probe("onnxruntime") == {"loaded": True, "at_import": None}


MISSING = "NoSuchAcceleratorExecutionProvider"


def test_providers_this_build_lacks_fall_back_to_cpu() -> None:
    from models.onnx_runtime import CPU, choose_providers  # noqa: PLC0415 - after the probes

    assert choose_providers([MISSING, CPU]) == ([CPU], [MISSING])
    assert choose_providers([CPU, CPU]) == ([CPU], [])
    assert choose_providers([]) == ([CPU], [])


def test_a_session_opens_on_cpu_and_says_why_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from models.manifest import shipped_models_dir  # noqa: PLC0415
    from models.onnx_runtime import CPU, open_session, provider_of  # noqa: PLC0415

    missing = "NoSuchOtherAcceleratorExecutionProvider"  # warned once per process: unique here
    path = next((shipped_models_dir() / "occupancy").glob("*.onnx"))
    with caplog.at_level("WARNING", logger="models.onnx_runtime"):
        first = open_session(path, providers=[missing])
        again = open_session(path, providers=[missing])
    assert provider_of(first) == provider_of(again) == CPU
    warnings = [r.getMessage() for r in caplog.records if missing in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "falling back to CPUExecutionProvider" in warnings[0]
    assert "available: " in warnings[0]
