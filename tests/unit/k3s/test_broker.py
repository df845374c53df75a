"""The broker under k3s: a password for every client from a Secret, no anonymous access;
with components/mqtt-tls one TLS listener whose certificate comes from a Secret, and the
hub configured to verify it. (A real mosquitto runs these files in
tests/integration/test_k3s_broker.py.)"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from hub.config import HubConfig
from services.kit.certs import BROKER_NAME
from tests.support.k3s import (
    K3S,
    MQTT_TLS_PORT,
    RENDERINGS,
    config_data,
    container_port,
    load_role_config,
    mqtt_port,
    named,
    pod_spec,
    role_mounts,
    service_port,
)


def _directives(conf: str) -> list[tuple[str, str]]:
    out = []
    for raw in conf.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            out.append((key, value.strip()))
    return out


def _secret_file(objs: list[dict[str, Any]], deploy: str, path: str) -> tuple[str, str]:
    """(Secret name, key) of the file at ``path`` in the first container of ``deploy``."""
    pod = pod_spec(named(objs, "Deployment", deploy))
    p = PurePosixPath(path)
    for m in pod["containers"][0]["volumeMounts"]:
        if p.is_relative_to(m["mountPath"]):
            assert m.get("readOnly") is True, path
            volume = next(v for v in pod["volumes"] if v["name"] == m["name"])
            assert "secret" in volume, f"{path} is not from a Secret"
            assert volume["secret"]["defaultMode"] & 0o007 == 0, f"{path} world-readable"
            rel = p.relative_to(m["mountPath"]).as_posix()
            keys = {i["path"]: i["key"] for i in volume["secret"]["items"]}
            assert rel in keys, f"{path}: not an item of {volume['secret']['secretName']}"
            return volume["secret"]["secretName"], keys[rel]
    raise AssertionError(f"{deploy}: {path} is on no volume")


def _secrets_of(objs: list[dict[str, Any]], deploy: str) -> set[str]:
    pod = pod_spec(named(objs, "Deployment", deploy))
    return {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}


@pytest.mark.parametrize("overlay", RENDERINGS)
def test_every_client_logs_in(
    rendered: dict[str, list[dict[str, Any]]], overlay: str, tmp_path: Path
) -> None:
    objs = rendered[overlay]
    conf = _directives(config_data(objs, "roost-mosquitto-config", "mosquitto.conf"))
    keys = [k for k, _ in conf]
    assert ("allow_anonymous", "false") in conf
    assert keys.count("allow_anonymous") == 1
    # Per-listener settings would let a listener fall back to its own (anonymous) rules.
    assert "per_listener_settings" not in keys
    assert "allow_zero_length_clientid" not in keys
    (password_file,) = [v for k, v in conf if k == "password_file"]
    assert _secret_file(objs, "roost-mosquitto", password_file) == (
        "roost-mosquitto-auth",
        "passwd",
    )
    # The hub logs in with its own password; each side sees only its own Secret.
    hub = load_role_config(objs, "hub", HubConfig, tmp_path)
    assert hub.mqtt_username == "roost-hub"
    assert hub.mqtt_password_file is not None
    assert _secret_file(objs, "roost-hub", str(hub.mqtt_password_file)) == (
        "roost-hub-mqtt",
        "password",
    )
    assert "roost-mosquitto-auth" not in _secrets_of(objs, "roost-hub")
    assert "roost-hub-mqtt" not in _secrets_of(objs, "roost-mosquitto")


@pytest.mark.parametrize("overlay", RENDERINGS)
def test_the_listener(
    rendered: dict[str, list[dict[str, Any]]], overlay: str, tmp_path: Path
) -> None:
    objs = rendered[overlay]
    conf = _directives(config_data(objs, "roost-mosquitto-config", "mosquitto.conf"))
    listeners = [v for k, v in conf if k == "listener"]
    tls = {k: v for k, v in conf if k in ("cafile", "certfile", "keyfile")}
    hub = load_role_config(objs, "hub", HubConfig, tmp_path)
    broker = named(objs, "Deployment", "roost-mosquitto")
    port = mqtt_port(objs)
    assert listeners == [f"{port} 0.0.0.0"], "one listener, nothing else open"
    assert hub.mqtt_port == port
    assert container_port(pod_spec(broker)["containers"][0], "mqtt") == port
    assert service_port(objs, hub.mqtt_host, "mqtt") == port
    assert service_port(objs, "roost-mosquitto-lan", "mqtt") == port
    if overlay != "edge+mqtt-tls":
        assert port == HubConfig().mqtt_port
        assert not tls
        assert hub.mqtt_tls_ca_file is None
        return
    assert port == MQTT_TLS_PORT
    assert ("require_certificate", "true") not in conf, "HA logs in with a password"
    assert dict(conf).get("tls_version") in ("tlsv1.2", "tlsv1.3")
    for key, file in (
        ("cafile", "ca.pem"),
        ("certfile", "mqtt-broker.pem"),
        ("keyfile", "mqtt-broker-key.pem"),
    ):
        assert _secret_file(objs, "roost-mosquitto", tls[key]) == ("roost-mosquitto-tls", file)
    # The hub verifies the broker against the hub CA it already mounts, by the name the
    # broker's certificate carries (`roost certs broker`).
    assert hub.mqtt_host == BROKER_NAME
    assert hub.mqtt_tls_ca_file == Path("/etc/roost/certs/ca.pem")
    assert role_mounts(objs, "hub")[str(hub.certs_dir)] is True
    assert hub.mqtt_tls_ca_file.parent == hub.certs_dir


def test_the_tls_configuration_differs_in_the_listener_only() -> None:
    base = (K3S / "base" / "mosquitto" / "mosquitto.conf").read_text()
    tls = (K3S / "components" / "mqtt-tls" / "mosquitto.conf").read_text()
    listener = ("listener", "cafile", "certfile", "keyfile", "tls_version")
    rest = [d for d in _directives(base) if d[0] not in listener]
    assert [d for d in _directives(tls) if d[0] not in listener] == rest
    assert ("allow_anonymous", "false") in rest
