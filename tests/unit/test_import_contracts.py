"""The import boundaries in `.importlinter` hold, and each one fails when its leak returns.

Every leak that issue 12 found (a service reaching into another, `models/` importing
services or bench, the hub runtime importing services or the CLI, torch in a service
that must not have it, onnxruntime imported before its telemetry is off) is put back into a copy of the tree, and `lint-imports` must
name the contract that forbids it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("services", "hub", "cli", "models", "bench", "fleet")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("lint-imports")
    return subprocess.run(
        [str(exe), "--config", str(root / ".importlinter"), "--no-cache"],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin", "COLUMNS": "250"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def copy_tree(dst: Path) -> Path:
    for package in PACKAGES:
        shutil.copytree(
            ROOT / package,
            dst / package,
            ignore=shutil.ignore_patterns("__pycache__", "artifacts", "results", "*.onnx"),
        )
    shutil.copy(ROOT / ".importlinter", dst / ".importlinter")
    return dst


def test_the_tree_keeps_every_contract() -> None:
    out = lint_imports(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


# (the package or module that gains the import, the import, the contract that must break)
LEAKS = [
    ("services/inference", "services.update.servicer", "the four services talk over gRPC"),
    ("services/personalization", "services.update.servicer", "the four services talk over gRPC"),
    ("services/personalization", "services.inference.servicer", "the four services talk over gRPC"),
    ("models", "services.personalization", "models is a leaf library"),
    ("models", "bench.machine", "models is a leaf library"),
    ("hub", "services.audit", "the hub runtime imports only"),
    ("hub", "services.update", "the hub runtime imports only"),
    ("hub", "cli.main", "the hub runtime imports only"),
    ("services/kit", "services.update", "the service kit depends on no service"),
    ("services/modelstore", "services.update", "the model store depends only on"),
    ("services/audit", "hub", "services import no hub, CLI, fleet or bench code"),
    ("services/personalization", "fleet.client_app", "services import no hub, CLI, fleet"),
    ("hub", "fleet.egress", "the hub runtime imports only"),
    ("fleet", "services.personalization.federated", "the fleet's Flower apps reach"),
    ("fleet", "hub.app", "the fleet's Flower apps reach"),
    ("services/inference", "torch", "no service but personalization imports torch"),
    ("services/inference", "services.modelstore.registry", "the update service is the model"),
    ("services/personalization", "services.modelstore.registry", "the update service is the model"),
    ("services/audit/verify.py", "services.audit.store", "the auditor's offline verifier"),
    ("services/audit/verify.py", "sqlite3", "the auditor's offline verifier"),
    ("services/inference", "onnxruntime", "onnxruntime is imported only through"),
    ("models/occupancy", "onnxruntime", "onnxruntime is imported only through"),
    ("services/update", "onnxruntime", "onnxruntime is imported only through"),
]


@pytest.mark.parametrize(("where", "target", "contract"), LEAKS)
def test_each_leak_breaks_its_contract(
    tmp_path: Path, where: str, target: str, contract: str
) -> None:
    root = copy_tree(tmp_path)
    module = root / where if where.endswith(".py") else root / where / "__init__.py"
    module.write_text(module.read_text() + f"\nimport {target}  # the leak\n")
    out = lint_imports(root)
    assert out.returncode != 0, f"{where} -> {target} was not caught:\n{out.stdout}"
    broken = [line for line in out.stdout.splitlines() if " BROKEN" in line]
    assert any(line.startswith(contract) for line in broken), out.stdout
