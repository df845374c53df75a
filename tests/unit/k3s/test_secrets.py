"""Secrets and config maps: each is rendered or documented, and each role's holds its own key."""

from __future__ import annotations

import re
from typing import Any

from services.kit.certs import LOCAL_CANDIDATE_KEY, LOCAL_CANDIDATE_PUB
from tests.support.k3s import ROOST_ROLES, ROOT, of_kind, pod_spec

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
        for deploy in of_kind(objs, "Deployment"):
            pod = pod_spec(deploy)
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
