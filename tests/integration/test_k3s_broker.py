"""The k3s broker configuration, run by a real mosquitto: no anonymous client, no wrong
password, the hub's own login accepted (as the hub connects: hub.mqtt.broker_login); with
components/mqtt-tls only TLS, verified against the hub CA.

The mosquitto.conf is the one kustomize renders for the pod, with only the pod's paths
moved into a temporary directory and the listener onto a free loopback port.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from cli.stack import find_mosquitto, free_port, wait_for_port
from hub import mqtt
from services.kit.certs import ensure_certs, issue_broker
from tests.support.k3s import config_data, find_kubectl, overlay_copy, render

HUB_PASSWORD = "hub-secret-1"


def _broker_conf(tmp: Path, component: str | None) -> str:
    out = tmp / "overlay"
    out.mkdir()
    objs = render(find_kubectl(), overlay_copy(out, "edge", component))
    return config_data(objs, "roost-mosquitto-config", "mosquitto.conf")


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
