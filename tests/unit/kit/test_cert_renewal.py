"""`roost certs renew`: the CA is kept, due leaves get new keys and dates and nothing else,
the set is replaced whole (an interruption at any point leaves all-old or all-new), and
old and new certificates keep working with each other while pods roll."""

from __future__ import annotations

import datetime as dt
import os
import socket
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cli.main import main
from services.kit import cert_renewal, cert_staging
from services.kit.auth import Role
from services.kit.cert_renewal import RenewalRefused, renew
from services.kit.cert_staging import STAGING, finish_pending
from services.kit.certs import CA_DAYS, ensure_certs, issue_broker, load_ca, sign_leaf

LEAVES = [f"{r.value}.pem" for r in Role]


def _snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in d.iterdir() if p.is_file() and p.suffix == ".pem"}


def _cert(d: Path, name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate((d / name).read_bytes())


def _pair_matches(d: Path, name: str) -> bool:
    key = serialization.load_pem_private_key(
        (d / name.replace(".pem", "-key.pem")).read_bytes(), None
    )
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key.public_key().public_numbers() == _cert(d, name).public_key().public_numbers()  # type: ignore[union-attr]


def _soon(d: Path) -> dt.datetime:
    """A moment 30 days before the leaves expire: every leaf is due within 90 days."""
    return _cert(d, "hub.pem").not_valid_after_utc - dt.timedelta(days=30)


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    d = tmp_path / "certs"
    ensure_certs(d, "home-1")
    issue_broker(d, ["192.168.1.5", "hub.lan"])
    return d


def test_due_leaves_are_reissued_and_the_ca_is_kept(certs: Path) -> None:
    before = _snapshot(certs)
    old = {n: _cert(certs, n) for n in [*LEAVES, "mqtt-broker.pem"]}
    renewed = renew(certs, now=_soon(certs))
    assert sorted(r.name for r in renewed) == sorted(old)
    after = _snapshot(certs)
    assert after["ca.pem"] == before["ca.pem"]
    assert (certs / "ca-key.pem").read_bytes() == before["ca-key.pem"]
    ca = _cert(certs, "ca.pem")
    for name, was in old.items():
        new = _cert(certs, name)
        new.verify_directly_issued_by(ca)
        assert _pair_matches(certs, name), name
        assert new.public_key().public_numbers() != was.public_key().public_numbers(), name  # type: ignore[union-attr]
        assert new.serial_number != was.serial_number
        assert new.subject == was.subject
        for ext in (x509.SubjectAlternativeName, x509.ExtendedKeyUsage, x509.BasicConstraints):
            assert new.extensions.get_extension_for_class(ext).value == (
                was.extensions.get_extension_for_class(ext).value
            ), (name, ext)
        assert new.not_valid_after_utc >= was.not_valid_after_utc
        assert (certs / name.replace(".pem", "-key.pem")).stat().st_mode & 0o777 == 0o600
    # The Ed25519 local-candidate key is not a certificate: untouched.
    assert (certs / "local-candidate-key.pem").read_bytes() == before["local-candidate-key.pem"]
    assert not (certs / STAGING).exists()


def test_nothing_due_changes_nothing(certs: Path) -> None:
    before = _snapshot(certs)
    assert renew(certs) == []  # fresh certificates: ~825 days left
    assert _snapshot(certs) == before


def test_only_the_due_leaf_is_renewed(certs: Path) -> None:
    # The broker's certificate is reissued to end in 10 days; the rest are fresh.
    ca = load_ca(certs)
    was = _cert(certs, "mqtt-broker.pem")
    short = ca[0].not_valid_before_utc + dt.timedelta(days=10)
    cert = (
        x509.CertificateBuilder()
        .subject_name(was.subject)
        .issuer_name(ca[0].subject)
        .public_key(was.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(was.not_valid_before_utc)
        .not_valid_after(short)
    )
    for ext in was.extensions:
        cert = cert.add_extension(ext.value, ext.critical)
    (certs / "mqtt-broker.pem").write_bytes(
        cert.sign(ca[1], was.signature_hash_algorithm).public_bytes(serialization.Encoding.PEM)  # type: ignore[arg-type]
    )
    before = _snapshot(certs)
    renewed = renew(certs)
    assert [r.name for r in renewed] == ["mqtt-broker.pem"]
    after = _snapshot(certs)
    assert {n for n in after if after[n] != before.get(n)} == {
        "mqtt-broker.pem",
        "mqtt-broker-key.pem",
    }


def test_a_certificate_of_another_ca_is_left_alone(certs: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    ensure_certs(other, "elsewhere")
    (certs / "foreign.pem").write_bytes((other / "hub.pem").read_bytes())
    (certs / "foreign-key.pem").write_bytes((other / "hub-key.pem").read_bytes())
    renewed = renew(certs, now=_soon(certs))
    assert "foreign.pem" not in {r.name for r in renewed}
    assert (certs / "foreign.pem").read_bytes() == (other / "hub.pem").read_bytes()


def test_a_renewal_cut_before_its_commit_leaves_the_old_set(
    certs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _snapshot(certs)
    real = cert_renewal.write_atomic
    calls = []

    def dies_on_the_fifth_write(path: Path, data: bytes, mode: int = 0o644, **kw: bool) -> None:
        calls.append(path.name)
        if len(calls) == 5:
            raise OSError("power cut")
        real(path, data, mode, **kw)

    monkeypatch.setattr(cert_renewal, "write_atomic", dies_on_the_fifth_write)
    with pytest.raises(OSError, match="power cut"):
        renew(certs, now=_soon(certs))
    assert (certs / STAGING).is_dir()
    assert _snapshot(certs) == before  # nothing replaced yet
    monkeypatch.undo()
    assert finish_pending(certs) == []  # uncommitted: discarded
    assert not (certs / STAGING).exists()
    assert _snapshot(certs) == before


def test_a_renewal_cut_after_its_commit_is_completed(
    certs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.replace
    moved = []

    def dies_after_three_renames(src: os.PathLike[str], dst: os.PathLike[str]) -> None:
        out_of_staging = Path(src).parent.name == STAGING != Path(dst).parent.name
        if out_of_staging and len(moved) == 3:
            raise OSError("killed")
        real(src, dst)
        if out_of_staging:
            moved.append(Path(dst).name)

    monkeypatch.setattr(cert_staging.os, "replace", dies_after_three_renames)
    with pytest.raises(OSError, match="killed"):
        renew(certs, now=_soon(certs))
    monkeypatch.undo()
    assert len(moved) == 3
    # Mid-way: at least one pair is mixed (a new key beside its old certificate).
    assert not all(_pair_matches(certs, n) for n in LEAVES)
    # The next start of anything that ensures the certificates completes the set.
    ensure_certs(certs, "home-1")
    assert not (certs / STAGING).exists()
    assert all(_pair_matches(certs, n) for n in [*LEAVES, "mqtt-broker.pem"])


def test_the_ca_near_its_end_is_refused(certs: Path) -> None:
    before = _snapshot(certs)
    ca_end = _cert(certs, "ca.pem").not_valid_after_utc
    with pytest.raises(RenewalRefused, match="the CA itself expires"):
        renew(certs, now=ca_end - dt.timedelta(days=30))
    assert _snapshot(certs) == before


def test_a_leaf_never_outlives_its_ca(certs: Path) -> None:
    ca_cert, ca_key = load_ca(certs)
    short_ca = (
        x509.CertificateBuilder()
        .subject_name(ca_cert.subject)
        .issuer_name(ca_cert.subject)
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(ca_cert.not_valid_before_utc)
        .not_valid_after(dt.datetime.now(dt.UTC) + dt.timedelta(days=100))
        .sign(ca_key, ca_cert.signature_hash_algorithm)  # type: ignore[arg-type]
    )
    hub = _cert(certs, "hub.pem")
    pem, _ = sign_leaf(
        (short_ca, ca_key),
        hub.subject,
        hub.extensions.get_extension_for_class(x509.SubjectAlternativeName).value,
        hub.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value,
    )
    assert x509.load_pem_x509_certificate(pem).not_valid_after_utc == short_ca.not_valid_after_utc
    assert CA_DAYS > 100


def test_without_the_ca_key_renewal_is_refused(certs: Path) -> None:
    (certs / "ca-key.pem").unlink()
    with pytest.raises(RenewalRefused, match=r"no ca-key\.pem"):
        renew(certs, now=_soon(certs))


def _handshake(certs_server: Path, server: str, certs_client: Path, client: str) -> None:
    """A TLS 1.3 handshake with client certificates, both verified against ca.pem."""
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(certs_server / f"{server}.pem", certs_server / f"{server}-key.pem")
    sctx.load_verify_locations(certs_server / "ca.pem")
    sctx.verify_mode = ssl.CERT_REQUIRED
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.load_cert_chain(certs_client / f"{client}.pem", certs_client / f"{client}-key.pem")
    cctx.load_verify_locations(certs_client / "ca.pem")
    listener = socket.create_server(("127.0.0.1", 0))
    errors: list[BaseException] = []

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with sctx.wrap_socket(conn, server_side=True) as s:
                s.sendall(b"ok")
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=serve)
    t.start()
    try:
        with (
            socket.create_connection(listener.getsockname(), timeout=5) as raw,
            cctx.wrap_socket(raw, server_hostname=f"roost-{server}") as s,
        ):
            assert s.recv(2) == b"ok"
    finally:
        t.join(5)
        listener.close()
    assert not errors, errors


def test_old_and_new_certificates_work_together_while_pods_roll(
    certs: Path, tmp_path: Path
) -> None:
    old = tmp_path / "old"
    old.mkdir()
    for p in certs.iterdir():
        if p.is_file():
            (old / p.name).write_bytes(p.read_bytes())
    renew(certs, now=_soon(certs))
    assert (old / "audit.pem").read_bytes() != (certs / "audit.pem").read_bytes()
    _handshake(certs, "audit", old, "hub")  # renewed server, client not yet restarted
    _handshake(old, "audit", certs, "hub")  # server not yet restarted, renewed client


def test_the_command(certs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["certs", "renew", "--dir", str(certs)]) == 0
    assert "nothing to renew" in capsys.readouterr().out
    before = _snapshot(certs)
    assert main(["certs", "renew", "--dir", str(certs), "--within-days", "10000"]) == 2
    assert "the CA itself expires" in capsys.readouterr().err
    assert _snapshot(certs) == before
    assert main(["certs", "renew", "--dir", str(certs), "--all"]) == 0
    out = capsys.readouterr().out
    assert "renewed hub.pem" in out
    assert _snapshot(certs)["hub.pem"] != before["hub.pem"]
    assert _snapshot(certs)["ca.pem"] == before["ca.pem"]
