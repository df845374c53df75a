"""Pods: probes, resources, the hardened securityContext, no tokens, state volumes."""

from __future__ import annotations

from typing import Any

from tests.support.k3s import (
    HEALTH_PORT,
    ROOST_ROLES,
    ROOST_UID,
    STARTUP_PROBE_ROLES,
    STATEFUL,
    all_objects,
    of_kind,
    pod_labels,
    pod_spec,
)


def test_probes_and_resources(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for overlay, deploy in all_objects(rendered):
        if deploy["kind"] != "Deployment":
            continue
        component = pod_labels(deploy)["app.kubernetes.io/component"]
        inits = pod_spec(deploy).get("initContainers", [])
        for c in pod_spec(deploy)["containers"] + inits:
            where = f"{overlay}: {deploy['metadata']['name']}/{c['name']}"
            if c not in inits:  # Kubernetes refuses probes on init containers
                assert "readinessProbe" in c, f"{where}: no readinessProbe"
                assert "livenessProbe" in c, f"{where}: no livenessProbe"
            if component in ROOST_ROLES:  # the services and the hub: the kit's probe port
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
    for overlay, deploy in all_objects(rendered):
        if deploy["kind"] != "Deployment":
            continue
        pod = pod_spec(deploy)
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
    for overlay, sa in all_objects(rendered):
        if sa["kind"] == "ServiceAccount":
            assert sa.get("automountServiceAccountToken") is False, (overlay, sa["metadata"])
    for overlay, obj in all_objects(rendered):
        assert obj["kind"] not in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"), (
            overlay,
            obj["metadata"]["name"],
        )


def test_state_volumes(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for overlay, objs in rendered.items():
        for pvc in of_kind(objs, "PersistentVolumeClaim"):
            assert pvc["spec"]["storageClassName"] == "local-path", pvc["metadata"]["name"]
        claims = {}
        for deploy in of_kind(objs, "Deployment"):
            name = deploy["metadata"]["name"]
            pod = pod_spec(deploy)
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
        declared = {p["metadata"]["name"] for p in of_kind(objs, "PersistentVolumeClaim")}
        assert set(claims) == declared, overlay


def test_onnxruntime_telemetry_is_off_in_every_roost_container(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    seen = set()
    for overlay, deploy in all_objects(rendered):
        if deploy["kind"] != "Deployment":
            continue
        component = pod_labels(deploy)["app.kubernetes.io/component"]
        if component not in ROOST_ROLES:
            continue
        for c in pod_spec(deploy)["containers"]:
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            where = f"{overlay}: {deploy['metadata']['name']}/{c['name']}"
            assert env.get("ORT_DISABLE_TELEMETRY") == "1", where
            seen.add(component)
    assert seen == set(ROOST_ROLES)
