"""`roost certs broker`: the broker's TLS certificate, issued by the hub CA for the name the
hub connects to under k3s (roost-mosquitto) and the addresses Home Assistant uses."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from cli.main import main
from services.kit.certs import BROKER_NAME


def test_the_broker_certificate(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    assert main(["certs", "init", "--dir", str(certs)]) == 0
    ca_before = (certs / "ca.pem").read_bytes()
    args = ["certs", "broker", "--dir", str(certs), "--name", "192.168.1.5", "--name", "hub.lan"]
    assert main(args) == 0
    assert (certs / "ca.pem").read_bytes() == ca_before
    cert = x509.load_pem_x509_certificate((certs / "mqtt-broker.pem").read_bytes())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_before))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {BROKER_NAME, "localhost", "hub.lan"}
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("192.168.1.5"),
    }
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]  # a server, never a client identity
    assert (certs / "mqtt-broker-key.pem").stat().st_mode & 0o777 == 0o600
