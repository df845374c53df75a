"""The k3s broker configuration, run by a real mosquitto: no anonymous client, no wrong
password, the hub's own login accepted (as the hub connects: hub.mqtt.broker_login); with
components/mqtt-tls only TLS, verified against the hub CA.

The mosquitto.conf is the one kustomize renders for the pod, with only the pod's paths
moved into a temporary directory and the listener onto a free loopback port. The hub
process runs with its pod's roost.toml and environment (plaintext and TLS) and must come
online on that broker.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from cli.stack import Stack, find_mosquitto, free_port, wait_for_port
from hub import mqtt
from services.kit.auth import Role
from services.kit.certs import ensure_certs, issue_broker
from tests.support.k3s import (
    config_data,
    find_kubectl,
    overlay_copy,
    plain_env,
    render,
    role_container,
    role_toml,
)

HUB_PASSWORD = "hub-secret-1"


def _rendered(tmp: Path, component: str | None) -> list[dict[str, Any]]:
    out = tmp / "overlay"
    out.mkdir()
    return render(find_kubectl(), overlay_copy(out, "edge", component))


def _broker_conf(tmp: Path, component: str | None) -> str:
    return config_data(_rendered(tmp, component), "roost-mosquitto-config", "mosquitto.conf")


@contextmanager
def _broker(tmp: Path, conf: str) -> Iterator[int]:
    passwd = shutil.which("mosquitto_passwd")
    if passwd is None:
        pytest.skip("mosquitto_passwd not installed (package mosquitto)")
    port = free_port()
    for d in ("auth", "data", "tls"):
        (tmp / d).mkdir(exist_ok=True)
    subprocess.run(
        [passwd, "-b", "-c", str(tmp / "auth" / "passwd"), "roost-hub", HUB_PASSWORD], check=True
    )
    subprocess.run(
        [passwd, "-b", str(tmp / "auth" / "passwd"), "homeassistant", "ha-secret"], check=True
    )
    text = re.sub(r"^listener (\d+) 0\.0\.0\.0$", f"listener {port} 127.0.0.1", conf, flags=re.M)
    assert f"listener {port} 127.0.0.1" in text
    text = text.replace("/mosquitto/", f"{tmp}/")
    # Run as root, mosquitto would switch to the user `mosquitto` (as cli/stack.py).
    text += f"user {pwd.getpwuid(os.getuid()).pw_name}\n"
    (tmp / "mosquitto.conf").write_text(text)
    log = (tmp / "mosquitto.log").open("wb")
    proc = subprocess.Popen(
        [find_mosquitto(), "-c", str(tmp / "mosquitto.conf")], stdout=log, stderr=log
    )
    try:
        wait_for_port("127.0.0.1", port, 10)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


async def _round_trip(port: int, **login: Any) -> bytes:
    """Connect, subscribe, publish, receive: what the hub needs from the broker."""
    async with mqtt.client("127.0.0.1", port, **login) as c:
        await c.subscribe("roost/test", qos=1)
        await c.publish("roost/test", b"hello", qos=1)
        async with asyncio.timeout(5):
            async for message in c.messages:
                return bytes(message.payload)  # type: ignore[arg-type]
    raise AssertionError("no message")


async def _burst(port: int, n: int, **login: Any) -> list[bytes]:
    """A burst published at once (hub.mqtt.publish_all) and read back on one client: over
    TLS, hub.mqtt.BufferedSocket reads what the TLS layer decrypted too."""
    sent = [f"{i}".encode() for i in range(n)]
    got: list[bytes] = []
    async with mqtt.client("127.0.0.1", port, max_inflight_messages=0, **login) as c:
        await c.subscribe("roost/burst", qos=1)
        assert await mqtt.publish_all(c, [("roost/burst", p) for p in sent]) == [None] * n
        async with asyncio.timeout(30):
            async for message in mqtt.incoming(c):
                got.append(bytes(message.payload))  # type: ignore[arg-type]
                if len(got) == n:
                    break
    return got


async def _refused(port: int, **login: Any) -> str:
    """The connection never gets as far as CONNACK success: refused, reset or left
    without an answer (a plaintext client on the TLS port), within 5 s."""
    with pytest.raises((aiomqtt.MqttError, TimeoutError)) as e:
        async with asyncio.timeout(5), mqtt.client("127.0.0.1", port, **login):
            pass
    return str(e.value)


def _hub_login(tmp: Path, password: str, ca: Path | None = None) -> dict[str, Any]:
    (tmp / "hub-password").write_text(password + "\n")
    return mqtt.broker_login("roost-hub", tmp / "hub-password", ca)


def test_the_k3s_broker_admits_only_logged_in_clients(tmp_path: Path) -> None:
    conf = _broker_conf(tmp_path, None)
    with _broker(tmp_path, conf) as port:

        async def check() -> None:
            assert "authori" in (await _refused(port)).lower()  # anonymous
            assert "authori" in (await _refused(port, **_hub_login(tmp_path, "guess"))).lower()
            no_password = {"username": "roost-hub"}
            assert "authori" in (await _refused(port, **no_password)).lower()
            assert await _round_trip(port, **_hub_login(tmp_path, HUB_PASSWORD)) == b"hello"
            ha = {"username": "homeassistant", "password": "ha-secret"}
            assert await _round_trip(port, **ha) == b"hello"

        asyncio.run(check())


def test_with_mqtt_tls_the_broker_speaks_only_verified_tls(tmp_path: Path) -> None:
    conf = _broker_conf(tmp_path, "mqtt-tls")
    certs = tmp_path / "certs"
    ensure_certs(certs, "home-1")
    issue_broker(certs, ["192.168.1.5"])
    (tmp_path / "tls").mkdir()
    for f in ("ca.pem", "mqtt-broker.pem", "mqtt-broker-key.pem"):
        shutil.copy(certs / f, tmp_path / "tls" / f)
    other = tmp_path / "other-ca"
    ensure_certs(other, "elsewhere")
    with _broker(tmp_path, conf) as port:

        async def check() -> None:
            # The hub as configured by the component: TLS, verified against the hub CA.
            login = _hub_login(tmp_path, HUB_PASSWORD, certs / "ca.pem")
            assert await _round_trip(port, **login) == b"hello"
            assert await _burst(port, 3_000, **login) == [f"{i}".encode() for i in range(3_000)]
            # Plaintext on the TLS port: the broker drops the connection.
            await _refused(port, **_hub_login(tmp_path, HUB_PASSWORD))
            # A broker certificate from another CA is refused by the hub.
            await _refused(port, **_hub_login(tmp_path, HUB_PASSWORD, other / "ca.pem"))
            # TLS does not replace the login.
            anonymous = {"tls_params": aiomqtt.TLSParameters(ca_certs=str(certs / "ca.pem"))}
            assert "authori" in (await _refused(port, **anonymous)).lower()

        asyncio.run(check())
    # (mosquitto's log reaches the file when it stops)
    assert "wrong version number" in (tmp_path / "mosquitto.log").read_text()


@contextmanager
def _hub_process(tmp: Path, objs: list[dict[str, Any]], port: int, stack: Stack) -> Iterator[None]:
    """`python -m hub` with the pod's roost.toml and environment; only the pod's paths and
    the peers' addresses are moved here (broker, inference and audit on loopback)."""
    (tmp / "pod").mkdir()
    (tmp / "pod" / "roost.toml").write_text(role_toml(objs, "hub"))
    env = {**os.environ, **plain_env(role_container(objs, "hub"))}
    env |= {
        "ROOST_CONFIG": str(tmp / "pod" / "roost.toml"),
        "ROOST_HUB_MQTT_HOST": "127.0.0.1",
        "ROOST_HUB_MQTT_PORT": str(port),
        "ROOST_HUB_MQTT_PASSWORD_FILE": str(tmp / "hub-password"),
        "ROOST_HUB_CERTS_DIR": str(stack.certs_dir),
        "ROOST_HUB_INFERENCE_TARGET": f"127.0.0.1:{stack.port_of(Role.INFERENCE)}",
        "ROOST_HUB_AUDIT_TARGET": f"127.0.0.1:{stack.port_of(Role.AUDIT)}",
        "ROOST_HUB_UPDATE_TARGET": "",
        "ROOST_HUB_PERSONALIZATION_TARGET": "",
        "ROOST_HUB_DATA_DIR": str(tmp / "hub-data"),
        "ROOST_HUB_METRICS_HOST": "127.0.0.1",
        "ROOST_HUB_METRICS_PORT": "0",
        "ROOST_HUB_HEALTH_PORT": "0",
    }
    if "ROOST_HUB_MQTT_TLS_CA_FILE" in env:
        env["ROOST_HUB_MQTT_TLS_CA_FILE"] = str(stack.certs_dir / "ca.pem")
    log = (tmp / "hub.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "hub"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


async def _hub_status(port: int, hub_id: str, **login: Any) -> bytes:
    async with mqtt.client("127.0.0.1", port, **login) as c:
        await c.subscribe(f"roost/{hub_id}/status", qos=1)
        async with asyncio.timeout(30):
            async for message in c.messages:
                if message.payload == b"online":
                    return b"online"
    raise AssertionError("the hub never came online")


@pytest.mark.parametrize("component", [None, "mqtt-tls"])
def test_the_hub_as_configured_for_its_pod_logs_in(tmp_path: Path, component: str | None) -> None:
    objs = _rendered(tmp_path, component)
    conf = config_data(objs, "roost-mosquitto-config", "mosquitto.conf")
    (tmp_path / "hub-password").write_text(HUB_PASSWORD + "\n")
    with Stack(tmp_path / "stack") as stack:
        stack.start_service(Role.AUDIT)
        stack.start_service(Role.INFERENCE)
        certs = stack.certs_dir  # the hub's CA: the broker's certificate is issued by it
        issue_broker(certs)
        (tmp_path / "tls").mkdir()
        for f in ("ca.pem", "mqtt-broker.pem", "mqtt-broker-key.pem"):
            shutil.copy(certs / f, tmp_path / "tls" / f)
        ha: dict[str, Any] = {"username": "homeassistant", "password": "ha-secret"}
        if component:
            ha["tls_params"] = aiomqtt.TLSParameters(ca_certs=str(certs / "ca.pem"))
        with _broker(tmp_path, conf) as port, _hub_process(tmp_path, objs, port, stack):
            assert asyncio.run(_hub_status(port, "local", **ha)) == b"online"
