"""The hub's broker login (hub.mqtt.broker_login): nothing configured = anonymous, as in
`roost run`; the password is read from its file at each connect (a rotated Secret is
picked up at the next reconnect); TLS verifies against the given CA. The real broker is
in tests/integration/test_k3s_broker.py."""

from __future__ import annotations

import ssl
from pathlib import Path

import aiomqtt

from hub.config import HubConfig
from hub.mqtt import broker_login


def test_nothing_configured_is_anonymous() -> None:
    cfg = HubConfig()
    assert broker_login(cfg.mqtt_username, cfg.mqtt_password_file, cfg.mqtt_tls_ca_file) == {}


def test_the_password_is_read_at_each_connect(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("first\n")  # kubectl create secret --from-file keeps a newline
    assert broker_login("roost-hub", secret, None) == {
        "username": "roost-hub",
        "password": "first",
    }
    secret.write_text("rotated")
    assert broker_login("roost-hub", secret, None)["password"] == "rotated"


def test_tls_verifies_against_the_given_ca(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    login = broker_login("", None, ca)
    params = login["tls_params"]
    assert isinstance(params, aiomqtt.TLSParameters)
    assert params.ca_certs == str(ca)
    assert params.cert_reqs in (None, ssl.CERT_REQUIRED)  # paho's default: verify
    assert "username" not in login
