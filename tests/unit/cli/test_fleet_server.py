"""The SuperLink's TLS certificate: issued from the server stack's CA for the addresses
hubs connect to, kept while it names them, and refused when it cannot serve the
SuperLink's own processes (the real SuperLink over TLS: tests/integration/test_fleet_flower.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from cli.fleet_server import FleetServer
from cli.stack import Stack, StackError
from services.kit.certs import TlsFiles, create_ca, leaf_names


@pytest.fixture
def stack(tmp_path: Path) -> Stack:
    return Stack(tmp_path / "server", hub_id="fleet-server")


def _issued_by(cert: Path, ca: Path) -> bool:
    try:
        x509.load_pem_x509_certificate(cert.read_bytes()).verify_directly_issued_by(
            x509.load_pem_x509_certificate(ca.read_bytes())
        )
    except (ValueError, InvalidSignature):
        return False
    return True


def test_tls_by_default_with_a_certificate_from_the_stacks_ca(stack: Stack) -> None:
    server = FleetServer(stack, host="0.0.0.0", names=["fleet.example.org", "192.0.2.7"])
    assert server.tls is not None
    assert server.tls.ca == stack.certs_dir / "ca.pem"
    assert {"fleet.example.org", "192.0.2.7", "127.0.0.1", "localhost"} <= leaf_names(
        server.tls.cert
    )
    assert "0.0.0.0" not in leaf_names(server.tls.cert)
    assert server.address.startswith("127.0.0.1:")  # its own processes connect there
    assert _issued_by(server.tls.cert, server.tls.ca)
    assert server.tls.key.stat().st_mode & 0o077 == 0
    # A CA with the same name but another key did not sign it (what a wrong CA is).
    create_ca(stack.home / "impostor", "fleet-server")
    assert not _issued_by(server.tls.cert, stack.home / "impostor" / "ca.pem")


def test_kept_while_it_names_the_hosts_and_reissued_for_a_new_one(stack: Stack) -> None:
    first = FleetServer(stack, names=["fleet.example.org"])
    assert first.tls is not None
    pem = first.tls.cert.read_bytes()
    FleetServer(stack, names=["fleet.example.org"])
    assert first.tls.cert.read_bytes() == pem
    again = FleetServer(stack, host="127.0.0.2", names=["fleet.example.org"])
    assert again.tls is not None
    assert again.tls.cert.read_bytes() != pem
    assert {"127.0.0.2", "fleet.example.org"} <= leaf_names(again.tls.cert)


def test_insecure_only_when_asked(stack: Stack) -> None:
    server = FleetServer(stack, insecure=True)
    assert server.tls is None
    assert server._tls_args() == ["--insecure"]
    assert not (stack.certs_dir / "superlink.pem").exists()
    tls = FleetServer(stack)._tls_args()
    assert "--insecure" not in tls
    assert tls[::2] == ["--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile"]


def test_an_operator_certificate_that_does_not_name_the_listened_address_is_refused(
    stack: Stack, tmp_path: Path
) -> None:
    own = FleetServer(stack, names=["fleet.example.org"]).tls
    assert own is not None
    # Issued for 127.0.0.1 and the name: listening on 127.0.0.3 it could not serve
    # its own SuperExec, which connects there.
    with pytest.raises(StackError, match=r"not valid for 127\.0\.0\.3"):
        FleetServer(stack, host="127.0.0.3", tls=own)
    assert FleetServer(stack, host="0.0.0.0", tls=own).tls == own
    garbage = tmp_path / "not-a-cert.pem"
    garbage.write_text("hello\n")
    with pytest.raises(StackError, match="no readable certificate"):
        FleetServer(stack, tls=TlsFiles(own.ca, garbage, own.key))
