"""The audit log's witnesses under k3s (components/witness-egress): the audit service is
what submits checkpoints to witnesses (services/audit/witness_client.py), so the audit
pod, and only it, gets egress to the witness's one address and port, from one site file
that also sets [audit] witnesses; without the component it reaches nothing, and
``make k3s-check`` refuses the placeholders and anything wider."""

from __future__ import annotations

import copy
import ipaddress
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.audit.config import AuditConfig
from services.audit.cosignature import Cosigner
from services.audit.witness_client import parse_witnesses
from tests.support.k3s import (
    K3S,
    PLACEHOLDER_DIGEST,
    ROOT,
    find_kubectl,
    load_role_config,
    main,
    named,
    of_kind,
    render,
    role_container,
    witness_problems,
    yaml_module,
)

WITNESS = "edge+witness-egress"
SITE = K3S / "components" / "witness-egress" / "witnesses.yaml"
# A witness verifier key, as `roost audit witness` writes it to witness.vkey.
VKEY = Cosigner("witness.alice.example/roost", Ed25519PrivateKey.generate()).vkey()


def _site() -> dict[str, str]:
    doc = yaml_module().safe_load(SITE.read_text())
    assert doc["metadata"]["annotations"]["config.kubernetes.io/local-config"] == "true"
    data: dict[str, str] = doc["data"]
    return data


def _audit_egress(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        rule
        for pol in of_kind(objs, "NetworkPolicy")
        if pol["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name")
        == "roost-audit"
        for rule in pol["spec"].get("egress", [])
    ]


def _render_with_site(tmp_path: Path, data: dict[str, str]) -> list[dict[str, Any]]:
    """The edge overlay with the component, from a copy of k3s/ whose site file (and image
    digests) an integrator edited."""
    tree = tmp_path / "k3s"
    shutil.copytree(K3S, tree)
    site = tree / "components" / "witness-egress" / "witnesses.yaml"
    text = site.read_text()
    for key, value in data.items():
        text = re.sub(rf"^  {key}: .*$", f'  {key}: "{value}"', text, flags=re.MULTILINE)
    site.write_text(text)
    edge = tree / "overlays" / "edge" / "kustomization.yaml"
    edge.write_text(
        edge.read_text()
        .replace(PLACEHOLDER_DIGEST, "sha256:" + "ab" * 32)
        .replace(
            "  - ../../components/monitoring\n",
            "  - ../../components/monitoring\n  - ../../components/witness-egress\n",
        )
    )
    return render(find_kubectl(), tree / "overlays" / "edge")


def test_without_the_component_the_audit_pod_reaches_nothing(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    for overlay in ("edge", "dev"):
        objs = rendered[overlay]
        assert [r for r in _audit_egress(objs) if r.get("to")] == [], overlay
        assert load_role_config(objs, "audit", AuditConfig, tmp_path).witnesses == ()
        assert witness_problems(objs, placeholder_ok=False) == []


def test_the_component_sets_the_witnesses_and_their_one_address_and_port(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    objs = rendered[WITNESS]
    site = _site()
    cfg = load_role_config(objs, "audit", AuditConfig, tmp_path)
    assert cfg.witnesses == (site["witnesses"],)
    pol = named(objs, "NetworkPolicy", "roost-audit-witnesses")["spec"]
    assert pol["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "roost-audit"}}
    assert pol["policyTypes"] == ["Egress"]
    assert pol["egress"] == [
        {
            "to": [{"ipBlock": {"cidr": site["address"]}}],
            "ports": [{"protocol": "TCP", "port": int(site["port"])}],
        }
    ]
    # No other pod gains egress from it; the audit pod's base policy still allows none.
    assert named(objs, "NetworkPolicy", "roost-audit")["spec"]["egress"] == []
    # The shipped values are placeholders: fine to render, refused before an apply.
    assert witness_problems(objs, placeholder_ok=True) == []
    assert witness_problems(objs, placeholder_ok=False) == [
        "audit witnesses: still the placeholder (witnesses.yaml)"
    ]


def test_an_edited_site_is_ready_and_make_k3s_check_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = {
        "witnesses": f"https://witness.alice.example:8443 {VKEY}",
        "address": "198.51.100.7/32",
        "port": "8443",
    }
    objs = _render_with_site(tmp_path, data)
    (peer,) = parse_witnesses(load_role_config(objs, "audit", AuditConfig, tmp_path).witnesses)
    assert peer.url == "https://witness.alice.example:8443"
    assert witness_problems(objs, placeholder_ok=False) == []
    assert main([str(tmp_path / "k3s" / "overlays" / "edge")]) == 0
    assert "audit witnesses, if any, reachable" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"address": "198.51.100.0/24"}, "wider than one address"),
        ({"address": "0.0.0.0/0"}, "wider than one address"),
        ({"port": "443"}, "not a witness port"),
        # The URL names an IP the policy does not allow.
        ({"witnesses": f"http://198.51.100.9:7380 {VKEY}"}, "which no egress allows"),
        ({"witnesses": "http://witness.alice.example:7380 not-a-key"}, "audit witnesses"),
    ],
)
def test_a_wider_or_mismatched_site_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], data: dict[str, str], problem: str
) -> None:
    base = {
        "witnesses": f"http://witness.alice.example:7380 {VKEY}",
        "address": "198.51.100.7/32",
        "port": "7380",
    }
    objs = _render_with_site(tmp_path, base | data)
    problems = witness_problems(objs, placeholder_ok=False)
    assert any(problem in p for p in problems), problems
    assert main([str(tmp_path / "k3s" / "overlays" / "edge")]) == 1
    assert problem in capsys.readouterr().err


def test_witnesses_without_egress_are_refused(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """Witnesses set in the audit config, but no egress (the gap this component closes)."""
    objs = copy.deepcopy(rendered["edge"])  # the session's rendering stays as it was
    container = role_container(objs, "audit")
    container["env"] = [
        *container["env"],
        {"name": "ROOST_AUDIT_WITNESSES", "value": f"http://witness.alice.example:7380 {VKEY}"},
    ]
    assert witness_problems(objs, placeholder_ok=False) == [
        "audit witnesses configured, but no egress lets the audit pod reach them"
    ]


def test_the_component_is_documented() -> None:
    text = (ROOT / "docs" / "deploy.md").read_text()
    assert "components/witness-egress" in text
    assert ipaddress.ip_network(_site()["address"]).num_addresses == 1
