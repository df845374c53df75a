"""The hub under k3s reaches Home Assistant: URL and token from a Secret (never a
literal), egress to Home Assistant's one address and API port only (set once per overlay,
roost-homeassistant-site), and its settings on a PVC rather than an emptyDir."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from hub.action_memory import MEMORY_FILE
from hub.config import HubConfig
from tests.support.k3s import (
    K3S,
    OVERLAYS,
    RENDERINGS,
    find_kubectl,
    load_role_config,
    named,
    of_kind,
    overlay_copy,
    pod_spec,
    render,
    role_container,
    role_toml,
    yaml_module,
)

SECRET = "roost-hub-homeassistant"


def _site(overlay: str) -> dict[str, str]:
    doc = yaml_module().safe_load((K3S / "overlays" / overlay / "homeassistant.yaml").read_text())
    assert doc["metadata"]["annotations"]["config.kubernetes.io/local-config"] == "true"
    data: dict[str, str] = doc["data"]
    return data


def _mount_of(objs: list[dict[str, Any]], path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The hub's (volumeMount, volume) that holds ``path``."""
    pod = pod_spec(named(objs, "Deployment", "roost-hub"))
    mounts = [
        m
        for m in role_container(objs, "hub")["volumeMounts"]
        if path.is_relative_to(m["mountPath"])
    ]
    assert mounts, f"{path} is on no volume"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    return mount, volume


def home_assistant_exposure(objs: list[dict[str, Any]]) -> list[str]:
    """What lets the hub reach more than Home Assistant's API, or more than Home Assistant
    reach the broker: every ipBlock in the policies of the hub and the broker."""
    problems = []
    for pol in of_kind(objs, "NetworkPolicy"):
        name = pol["metadata"]["name"]
        rules = [("egress", r, r.get("to", [])) for r in pol["spec"].get("egress", [])]
        rules += [("ingress", r, r.get("from", [])) for r in pol["spec"].get("ingress", [])]
        for way, rule, peers in rules:
            for peer in peers:
                if "ipBlock" not in peer:
                    continue
                block = peer["ipBlock"]
                net = ipaddress.ip_network(block["cidr"])
                if name in ("roost-hub-homeassistant", "roost-mosquitto"):
                    if net.num_addresses != 1:
                        problems.append(f"{name}: {way} {net} is wider than one address")
                    if block.get("except"):
                        problems.append(f"{name}: {way} {net} with exceptions")
                    if len(rule.get("ports", [])) != 1:
                        problems.append(f"{name}: {way} {net} on ports {rule.get('ports')}")
    return problems


@pytest.mark.parametrize("overlay", RENDERINGS)
def test_url_and_token_come_from_the_secret(
    rendered: dict[str, list[dict[str, Any]]], overlay: str, tmp_path: Path
) -> None:
    objs = rendered[overlay]
    hub = role_container(objs, "hub")
    env = {e["name"]: e for e in hub["env"]}
    assert env["ROOST_HUB_HA_URL"] == {
        "name": "ROOST_HUB_HA_URL",
        "valueFrom": {"secretKeyRef": {"name": SECRET, "key": "url"}},
    }
    assert "ha_url" not in role_toml(objs, "hub")
    cfg = load_role_config(objs, "hub", HubConfig, tmp_path)
    assert cfg.ha_url == ""  # plain config: the URL only ever comes from the Secret
    assert cfg.ha_token_file is not None
    mount, volume = _mount_of(objs, cfg.ha_token_file)
    assert mount["readOnly"] is True
    assert volume["secret"]["secretName"] == SECRET
    items = {i["key"]: i["path"] for i in volume["secret"]["items"]}
    assert items == {"token": cfg.ha_token_file.relative_to(mount["mountPath"]).as_posix()}
    assert volume["secret"]["defaultMode"] & 0o007 == 0, "the token is not world-readable"
    # No token anywhere in the rendered objects (a Secret would be rendered in clear).
    assert not [o for o in objs if o["kind"] == "Secret"], overlay


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_egress_to_home_assistant_only(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    objs = rendered[overlay]
    site = _site(overlay)
    address = ipaddress.ip_network(site["address"])
    assert address.num_addresses == 1
    pol = named(objs, "NetworkPolicy", "roost-hub-homeassistant")["spec"]
    assert pol["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "roost-hub"}}
    assert pol["policyTypes"] == ["Egress"]
    assert pol["egress"] == [
        {
            "to": [{"ipBlock": {"cidr": site["address"]}}],
            "ports": [{"protocol": "TCP", "port": int(site["api_port"])}],
        }
    ]
    # The same address is the only one outside the cluster the broker admits.
    mqtt = named(objs, "NetworkPolicy", "roost-mosquitto")["spec"]
    blocks = [p["ipBlock"]["cidr"] for r in mqtt["ingress"] for p in r["from"] if "ipBlock" in p]
    assert blocks == [site["address"]]
    assert home_assistant_exposure(objs) == []


@pytest.mark.parametrize(
    ("address", "port", "wider"),
    [
        ("192.168.1.0/24", "8123", True),  # the former default: every device on the LAN
        ("0.0.0.0/0", "8123", True),
        ("fd00::10/128", "443", False),
        ("10.0.0.7/32", "8443", False),
    ],
)
def test_one_site_file_sets_both_policies_and_a_range_is_refused(
    tmp_path: Path, address: str, port: str, wider: bool
) -> None:
    shipped = _site("edge")
    edited = overlay_copy(
        tmp_path,
        "edge",
        edit={
            f"address: {shipped['address']}": f"address: {address}",
            f'api_port: "{shipped["api_port"]}"': f'api_port: "{port}"',
        },
    )
    objs = render(find_kubectl(), edited)
    egress = named(objs, "NetworkPolicy", "roost-hub-homeassistant")["spec"]["egress"][0]
    assert egress["to"][0]["ipBlock"]["cidr"] == address
    assert egress["ports"][0]["port"] == int(port)
    ingress = named(objs, "NetworkPolicy", "roost-mosquitto")["spec"]["ingress"]
    assert [p["ipBlock"]["cidr"] for r in ingress for p in r["from"] if "ipBlock" in p] == [address]
    assert bool(home_assistant_exposure(objs)) == wider


@pytest.mark.parametrize("overlay", RENDERINGS)
def test_hub_state_is_on_a_persistent_volume(
    rendered: dict[str, list[dict[str, Any]]], overlay: str, tmp_path: Path
) -> None:
    objs = rendered[overlay]
    cfg = load_role_config(objs, "hub", HubConfig, tmp_path)
    # What the hub keeps there (hub/app.py, hub/action_memory.py, hub/journal.py).
    for name in ("ha_settings.json", MEMORY_FILE, "ha_mapping.json", "readings.sqlite"):
        mount, volume = _mount_of(objs, cfg.data_dir / name)
        assert not mount.get("readOnly"), name
        assert "emptyDir" not in volume, f"{overlay}: {name} would be lost with the pod"
        assert volume["persistentVolumeClaim"]["claimName"] == "roost-hub-data", name
    pvc = named(objs, "PersistentVolumeClaim", "roost-hub-data")["spec"]
    assert pvc["accessModes"] == ["ReadWriteOnce"]
    deploy = named(objs, "Deployment", "roost-hub")
    assert deploy["spec"]["replicas"] == 1
    assert deploy["spec"]["strategy"]["type"] == "Recreate", "one hub writes its state"
