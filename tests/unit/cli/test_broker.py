"""The home broker's configuration, credentials, ACL and mosquitto.conf (cli/broker.py),
and how ``roost run`` picks demo or home mode. The real broker enforcing them:
tests/integration/test_home_broker.py."""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import stat
from pathlib import Path

import pytest

from cli.broker import (
    CLIENTS,
    HA_CLIENT,
    HUB_CLIENT,
    SENSORS_CLIENT,
    BrokerConfigError,
    BrokerFiles,
    HomeBroker,
    MqttConfig,
    acl,
    advertised_host,
    check,
    ensure_credentials,
    ensure_tls,
    home_broker,
    listen_addresses,
    mosquitto_conf,
    password_hash,
    stack_login,
)
from cli.main import _home_mode
from cli.support import CliError
from services.kit.certs import ensure_certs, leaf_names
from services.kit.config import load_config

# Written by the real `mosquitto_passwd -b file alice s3cret` (mosquitto 2.0.11).
MOSQUITTO_PASSWD_LINE = (
    "alice:$7$101$Uy+zyDR6uzqNh4er$7jf71s9wYZZl5ZDrYd8/XdvVcgJ3mlACqYORMz6iG82mvyWDEyWrNC3ax6F"
    "lJ2PahWbXuz4Cub2o8hE9boNrxw=="
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _verifies(line: str, password: str) -> bool:
    """What mosquitto does with a password-file line: PBKDF2-SHA512 with its salt."""
    _, hashed = line.split(":", 1)
    _, kind, rounds, salt, digest = hashed.split("$")
    assert kind == "7"
    again = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(salt), int(rounds))
    return base64.b64encode(again).decode() == digest


def test_password_hash_is_what_mosquitto_passwd_writes() -> None:
    user, hashed = MOSQUITTO_PASSWD_LINE.split(":", 1)
    salt = base64.b64decode(hashed.split("$")[3])
    assert f"{user}:{password_hash('s3cret', salt)}" == MOSQUITTO_PASSWD_LINE
    assert _verifies(f"x:{password_hash('s3cret')}", "s3cret")
    assert not _verifies(f"x:{password_hash('s3cret')}", "s3cret ")
    # A fresh salt each time: equal passwords do not give equal lines.
    assert password_hash("s3cret") != password_hash("s3cret")


def test_credentials_are_generated_once_private_and_kept(tmp_path: Path) -> None:
    files = BrokerFiles(tmp_path / "mqtt")
    first = ensure_credentials(files)
    assert set(first) == set(CLIENTS)
    assert len(set(first.values())) == 3  # one password per client
    assert all(len(p) >= 32 for p in first.values())
    for client in CLIENTS:
        assert _mode(files.password_file(client)) == 0o600
        assert files.password(client) == first[client]
    assert _mode(files.passwd_file) == 0o600
    assert _mode(files.root) == 0o700
    assert _mode(files.password_file(HUB_CLIENT).parent) == 0o700
    lines = dict(line.split(":", 1) for line in files.passwd_file.read_text().splitlines())
    assert set(lines) == set(CLIENTS)
    for client, password in first.items():
        assert _verifies(f"{client}:{lines[client]}", password)
        assert password not in files.passwd_file.read_text()
    # A restart keeps them.
    assert ensure_credentials(files) == first
    # Another home gets other passwords.
    assert set(ensure_credentials(BrokerFiles(tmp_path / "other")).values()).isdisjoint(
        first.values()
    )


def test_a_lost_password_file_is_regenerated_alone(tmp_path: Path) -> None:
    files = BrokerFiles(tmp_path / "mqtt")
    first = ensure_credentials(files)
    files.password_file(SENSORS_CLIENT).unlink()
    files.password_file(HA_CLIENT).write_text("")
    again = ensure_credentials(files)
    assert again[HUB_CLIENT] == first[HUB_CLIENT]
    assert again[SENSORS_CLIENT] != first[SENSORS_CLIENT]
    assert again[HA_CLIENT] not in ("", first[HA_CLIENT])


def test_a_password_file_others_can_read_is_refused(tmp_path: Path) -> None:
    files = BrokerFiles(tmp_path / "mqtt")
    ensure_credentials(files)
    os.chmod(files.password_file(HA_CLIENT), 0o644)
    with pytest.raises(BrokerConfigError, match="readable by other users"):
        ensure_credentials(files)
    with pytest.raises(BrokerConfigError, match="readable by other users"):
        files.password(HA_CLIENT)


def test_acl_gives_each_client_only_its_topics() -> None:
    text = acl("home1", "ha_stream", "homeassistant")
    blocks = {
        block.splitlines()[0].removeprefix("user "): set(block.splitlines()[1:])
        for block in text.strip().split("\n\n")
    }
    assert blocks[SENSORS_CLIENT] == {"topic write roost/readings/#"}
    assert blocks[HA_CLIENT] == {
        "topic readwrite homeassistant/#",
        "topic write ha_stream/#",
        "topic read roost/home1/#",
        "topic write roost/home1/ha/cmd/#",
    }
    assert blocks[HUB_CLIENT] == {
        "topic readwrite roost/#",
        "topic readwrite homeassistant/#",
        "topic read ha_stream/#",
    }
    assert "pattern" not in text
    assert "\ntopic" not in text.split("user", 1)[0]


@pytest.mark.parametrize(
    ("hub_id", "base"),
    [
        ("h1/#", "ss"),
        ("+", "ss"),
        ("h1", "ss/#"),
        ("h1\nuser hub", "ss"),
        ("", "ss"),
        ("h1 ", "ss"),
    ],
)
def test_acl_refuses_names_that_would_widen_it(hub_id: str, base: str) -> None:
    with pytest.raises(BrokerConfigError, match="cannot be part of an MQTT ACL"):
        acl(hub_id, base, "homeassistant")


def test_mqtt_config_from_the_file_and_its_checks(tmp_path: Path) -> None:
    conf = tmp_path / "roost.toml"
    conf.write_text('[mqtt]\nport = 1999\nlisten = ["192.168.1.20"]\ntls_port = 8883\n')
    cfg = load_config(MqttConfig, "mqtt", file=conf, env={})
    assert cfg == MqttConfig(port=1999, listen=("192.168.1.20",), tls_port=8883)
    assert load_config(MqttConfig, "mqtt", env={}) == MqttConfig(port=1883, listen=("0.0.0.0",))
    check(cfg)
    for bad, message in (
        (MqttConfig(port=0), "not a TCP port"),
        (MqttConfig(port=70000), "not a TCP port"),
        (MqttConfig(tls_port=1883), "other than port"),
        (MqttConfig(listen=()), "listen is empty"),
    ):
        with pytest.raises(BrokerConfigError, match=message):
            check(bad)


def test_the_hub_always_has_a_loopback_listener() -> None:
    assert listen_addresses(MqttConfig(listen=("0.0.0.0",))) == ["0.0.0.0"]
    assert listen_addresses(MqttConfig(listen=("192.168.1.20",))) == ["192.168.1.20", "127.0.0.1"]
    assert listen_addresses(MqttConfig(listen=("127.0.0.1", "127.0.0.1"))) == ["127.0.0.1"]


def test_advertised_host() -> None:
    assert advertised_host(MqttConfig(host="hub.lan")) == "hub.lan"
    assert advertised_host(MqttConfig(listen=("127.0.0.1", "10.0.0.5"))) == "10.0.0.5"
    assert advertised_host(MqttConfig(listen=("127.0.0.1",))) == "127.0.0.1"
    # All interfaces: this machine's address on its network, never the wildcard.
    assert advertised_host(MqttConfig(listen=("0.0.0.0",))) != "0.0.0.0"


def _home(tmp_path: Path, config: MqttConfig) -> HomeBroker:
    certs = tmp_path / "certs"
    ensure_certs(certs, "h1")
    return home_broker(
        tmp_path,
        certs,
        config,
        hub_id="h1",
        statestream_base="ss",
        discovery_prefix="homeassistant",
    )


def test_mosquitto_conf_demo_and_home(tmp_path: Path) -> None:
    demo = mosquitto_conf(40001, tmp_path, None)
    assert "listener 40001 127.0.0.1\nallow_anonymous true\n" in demo
    assert "password_file" not in demo
    home = _home(tmp_path, MqttConfig(port=1883, listen=("192.168.1.20",)))
    text = mosquitto_conf(1883, tmp_path, home)
    assert "allow_anonymous false" in text
    assert "allow_anonymous true" not in text
    assert f"password_file {home.files.passwd_file}" in text
    assert f"acl_file {home.files.acl_file}" in text
    listeners = [line for line in text.splitlines() if line.startswith("listener")]
    assert listeners == ["listener 1883 192.168.1.20", "listener 1883 127.0.0.1"]
    assert "certfile" not in text


def test_tls_listener_and_its_certificate(tmp_path: Path) -> None:
    home = _home(tmp_path, MqttConfig(listen=("10.0.0.5",), tls_port=8883, host="hub.lan"))
    assert home.tls is not None
    text = mosquitto_conf(1883, tmp_path, home)
    assert f"listener 8883 10.0.0.5\ncafile {home.tls.ca}\ncertfile {home.tls.cert}" in text
    assert {"hub.lan", "10.0.0.5", "127.0.0.1", "localhost"} <= leaf_names(home.tls.cert)
    assert _mode(home.tls.key) == 0o600
    # Another advertised name: the certificate is issued again; the same one: kept.
    before = home.tls.cert.read_bytes()
    ensure_tls(tmp_path / "certs", MqttConfig(listen=("10.0.0.5",), tls_port=8883, host="hub.lan"))
    assert home.tls.cert.read_bytes() == before
    ensure_tls(tmp_path / "certs", MqttConfig(listen=("10.0.0.5",), tls_port=8883, host="roost"))
    assert "roost" in leaf_names(home.tls.cert)


def test_stack_login_only_in_home_mode(tmp_path: Path) -> None:
    files = BrokerFiles(tmp_path / "mqtt")
    passwords = ensure_credentials(files)
    assert stack_login({"mode": "demo", "port": 1}) == {}
    broker = {"mode": "home", "port": 1, "credentials": str(files.root)}
    assert stack_login(broker) == {"username": HUB_CLIENT, "password": passwords[HUB_CLIENT]}


def _run_args(**kw: object) -> argparse.Namespace:
    return argparse.Namespace(**{"no_simulator": False, "speedup": None, **kw})


def test_roost_run_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ROOST_CONFIG", raising=False)
    monkeypatch.delenv("ROOST_HUB_HA_URL", raising=False)
    assert _home_mode(_run_args()) is False  # make run: the demo
    assert _home_mode(_run_args(speedup=120.0)) is False
    assert _home_mode(_run_args(no_simulator=True)) is True
    assert _home_mode(_run_args(no_simulator=True, speedup=0.0)) is True
    with pytest.raises(CliError, match="simulator runs only in demo mode"):
        _home_mode(_run_args(no_simulator=True, speedup=60.0))
    # Home Assistant configured: a home, whatever the flags; never the simulator.
    monkeypatch.setenv("ROOST_HUB_HA_URL", "http://homeassistant.local:8123")
    assert _home_mode(_run_args()) is True
    with pytest.raises(CliError, match="Home Assistant is configured"):
        _home_mode(_run_args(speedup=60.0))
