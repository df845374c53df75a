"""The rendered k3s manifests, once per test session (rendering takes a few seconds)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.support.k3s import K3S, OVERLAYS, find_kubectl, render, yaml_module


@pytest.fixture(scope="session")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """Every overlay, plus the edge overlay with each opt-in component (RENDERINGS)."""
    kubectl = find_kubectl()
    yaml_module()
    out = {name: render(kubectl, K3S / "overlays" / name) for name in OVERLAYS}
    out["edge+fleet"] = render(kubectl, with_component(tmp_path_factory, "fleet"))
    out["edge+mqtt-tls"] = render(kubectl, with_component(tmp_path_factory, "mqtt-tls"))
    return out


def with_component(tmp_path_factory: pytest.TempPathFactory, component: str) -> Path:
    """The edge overlay with one more component, listed last in its own kustomization.yaml
    (as docs/deploy.md tells the integrator to enable it)."""
    yaml = yaml_module()
    edge = K3S / "overlays" / "edge"
    d = tmp_path_factory.mktemp(f"edge-{component}")
    for f in edge.iterdir():
        shutil.copy(f, d / f.name)
    kustomization = yaml.safe_load((edge / "kustomization.yaml").read_text())
    up = os.path.relpath(K3S, d)
    kustomization["resources"] = [
        r.replace("../..", up, 1) if r.startswith("../..") else r
        for r in kustomization["resources"]
    ]
    kustomization["components"] = [
        c.replace("../..", up, 1) for c in kustomization.get("components", [])
    ] + [f"{up}/components/{component}"]
    (d / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return d
