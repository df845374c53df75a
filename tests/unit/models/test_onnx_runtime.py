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
