"""The rendered k3s manifests, once per test session (rendering takes a few seconds)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.k3s import (
    COMPONENTS,
    K3S,
    OVERLAYS,
    find_kubectl,
    overlay_copy,
    render,
    yaml_module,
)


@pytest.fixture(scope="session")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """Every overlay, plus the edge overlay with each opt-in component (RENDERINGS)."""
    kubectl = find_kubectl()
    yaml_module()
    out = {name: render(kubectl, K3S / "overlays" / name) for name in OVERLAYS}
    for component in COMPONENTS:
        d = overlay_copy(tmp_path_factory.mktemp(f"edge-{component}"), "edge", component)
        out[f"edge+{component}"] = render(kubectl, d)
    return out
