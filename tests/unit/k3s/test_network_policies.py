"""Network policies: default deny, and exactly the allow-listed flows between pods."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from services.audit.config import AuditConfig
from services.inference.config import InferenceConfig
from services.personalization.config import PersonalizationConfig
from services.update.config import UpdateConfig
from tests.support.k3s import (
    EXTERNAL_EGRESS_COMPONENTS,
    METRICS_PORT,
    RENDERINGS,
    ROOST_ROLES,
    mqtt_port,
    named,
    of_kind,
    pod_labels,
    pod_spec,
)


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
    return {d["metadata"]["name"]: d for d in of_kind(objs, "Deployment")}


def _ports(deploy: dict[str, Any]) -> set[int]:
    return {p["containerPort"] for c in pod_spec(deploy)["containers"] for p in c.get("ports", [])}


def _peer_pods(peer: dict[str, Any], pods: dict[str, dict[str, Any]], ns: str) -> set[str]:
    """Pods of this namespace a rule peer selects (none for ipBlock / other namespaces)."""
    if "ipBlock" in peer:
        return set()
    ns_sel = peer.get("namespaceSelector")
    if ns_sel is not None and not _matches(ns_sel, {"kubernetes.io/metadata.name": ns}):
        return set()
    pod_sel = peer.get("podSelector", {})
    return {n for n, d in pods.items() if _matches(pod_sel, pod_labels(d))}


def _rule_ports(rule: dict[str, Any], deploy: dict[str, Any]) -> set[int]:
    if not rule.get("ports"):
        return _ports(deploy)
    return {p["port"] for p in rule["ports"]} & _ports(deploy)


def _allowed_flows(objs: list[dict[str, Any]]) -> set[tuple[str, str, int]]:
    """(from pod, to pod, port) the policies allow inside the namespace, both ends."""
    pods = _pods(objs)
    policies = of_kind(objs, "NetworkPolicy")
    ns = policies[0]["metadata"]["namespace"]
    egress: set[tuple[str, str, int]] = set()
    ingress: set[tuple[str, str, int]] = set()
    for pol in policies:
        spec = pol["spec"]
        selected = {n for n, d in pods.items() if _matches(spec["podSelector"], pod_labels(d))}
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


@pytest.mark.parametrize("overlay", RENDERINGS)
def test_network_flows_are_exactly_the_allow_list(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    objs = rendered[overlay]
    inference, audit, update = InferenceConfig().port, AuditConfig().port, UpdateConfig().port
    personalization = PersonalizationConfig().port
    expected = {
        ("roost-hub", "roost-inference", inference),
        ("roost-hub", "roost-audit", audit),
        ("roost-hub", "roost-mosquitto", mqtt_port(objs)),
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
    if overlay == "edge+fleet":
        # The SuperNode's ClientApp, as the hub: its round's update and its egress record.
        expected |= {
            ("roost-supernode", "roost-personalization", personalization),
            ("roost-supernode", "roost-audit", audit),
        }
    assert _allowed_flows(objs) == expected


@pytest.mark.parametrize("overlay", RENDERINGS)
def test_default_deny_and_no_open_egress(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    objs = rendered[overlay]
    policies = of_kind(objs, "NetworkPolicy")
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
        selected = [d for d in pods.values() if _matches(pol["spec"]["podSelector"], pod_labels(d))]
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
                components = {pod_labels(d)["app.kubernetes.io/component"] for d in selected}
                if components == {"hub"}:
                    # Home Assistant's API only: one address, one port (test_homeassistant).
                    assert name == "roost-hub-homeassistant", name
                    assert net.num_addresses == 1, f"{name}: the hub may reach {net}"
                    assert len(rule["ports"]) == 1, f"{name}: {rule['ports']}"
                    continue
                if components == {"audit"}:
                    # Its witnesses only: one address, one port (test_witness_egress).
                    assert name == "roost-audit-witnesses", name
                    assert net.num_addresses == 1, f"{name}: audit may reach {net}"
                    assert len(rule["ports"]) == 1, f"{name}: {rule['ports']}"
                    continue
                assert components <= EXTERNAL_EGRESS_COMPONENTS, (
                    f"{name}: {components} may reach {net} outside the cluster"
                )
        for rule in pol["spec"].get("ingress", []):
            assert rule.get("from"), f"{name}: ingress from anywhere {rule}"
            assert rule.get("ports"), f"{name}: ingress on any port {rule}"
            for peer in rule["from"]:
                if "ipBlock" in peer:
                    # Home Assistant's one address, never a LAN range.
                    net = ipaddress.ip_network(peer["ipBlock"]["cidr"])
                    assert net.num_addresses == 1, f"{name}: admits {net}"
                    assert [d["metadata"]["name"] for d in selected] == ["roost-mosquitto"]
                    assert [p["port"] for p in rule["ports"]] == [mqtt_port(objs)]


def test_dns_is_allowed_to_kube_dns_only(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for overlay, objs in rendered.items():
        dns = named(objs, "NetworkPolicy", "allow-dns")["spec"]
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
