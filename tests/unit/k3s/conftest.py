"""The rendered k3s manifests, once per test session (rendering takes a few seconds)."""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests.support.k3s import K3S, OVERLAYS, find_kubectl, render, yaml_module


@pytest.fixture(scope="session")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """Every overlay, plus the edge overlay with the opt-in fleet component."""
    kubectl = find_kubectl()
    yaml_module()
    out = {name: render(kubectl, K3S / "overlays" / name) for name in OVERLAYS}
    fleet = tmp_path_factory.mktemp("edge-fleet")
    (fleet / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: roost\n"
        f"resources: [{os.path.relpath(K3S / 'overlays' / 'edge', fleet)}]\n"
        f"components: [{os.path.relpath(K3S / 'components' / 'fleet', fleet)}]\n"
    )
    out["edge+fleet"] = render(kubectl, fleet)
    return out
