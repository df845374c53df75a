"""The hub's local certificate authority and per-role identities (``roost certs``).

Created on first start: an EC P-256 CA, then one key pair and certificate per role,
with the role as subject common name and ``roost-<role>`` plus localhost as names.
Files in the certs directory: ``ca.pem``, ``ca-key.pem``, ``<role>.pem``,
``<role>-key.pem`` (keys 0600).
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.kit.auth import Role
from services.kit.cert_staging import finish_pending
from services.kit.files import write_atomic

log = logging.getLogger(__name__)

# The hub's Ed25519 key for signing local model candidates (private, 0600) and its
# public half (raw, base64), which the update service trusts for local candidates only.
LOCAL_CANDIDATE_KEY = "local-candidate-key.pem"
LOCAL_CANDIDATE_PUB = "local-candidate.pub"

CA_DAYS = 3650
LEAF_DAYS = 825
# The MQTT broker's certificate (files mqtt-broker.pem, mqtt-broker-key.pem) and the name
# the hub connects to under k3s (the Service roost-mosquitto).
BROKER = "mqtt-broker"
BROKER_NAME = "roost-mosquitto"


@dataclass(frozen=True)
class Identity:
    """PEM material a process needs for mTLS."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes


def server_name(role: Role) -> str:
    """DNS name a role's certificate carries and clients verify (the k3s Service name)."""
    return f"roost-{role.value}"


def _write(path: Path, data: bytes, private: bool = False) -> None:
    write_atomic(path, data, 0o600 if private else 0o644)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str, hub_id: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"Roost hub {hub_id}"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def create_ca(certs_dir: Path, hub_id: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = _name(f"Roost local CA ({hub_id})", hub_id)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    certs_dir.mkdir(parents=True, exist_ok=True)
    _write(certs_dir / "ca-key.pem", _key_pem(key), private=True)
    _write(certs_dir / "ca.pem", cert.public_bytes(serialization.Encoding.PEM))


def load_ca(certs_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_key = serialization.load_pem_private_key((certs_dir / "ca-key.pem").read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate((certs_dir / "ca.pem").read_bytes())
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{certs_dir / 'ca-key.pem'}: not an EC key")
    return ca_cert, ca_key


def sign_leaf(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    subject: x509.Name,
    names: x509.SubjectAlternativeName,
    usages: x509.ExtendedKeyUsage,
) -> tuple[bytes, bytes]:
    """A new key and its certificate signed by the CA, valid LEAF_DAYS from now but never
    past the CA's own expiry: (certificate PEM, key PEM)."""
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + dt.timedelta(days=LEAF_DAYS), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(names, critical=False)
        .add_extension(usages, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def _hub_id(ca_cert: x509.Certificate) -> str:
    org = ca_cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value
    return str(org).removeprefix("Roost hub ")


def _alt_names(dns: Iterable[str], ips: Iterable[str]) -> x509.SubjectAlternativeName:
    return x509.SubjectAlternativeName(
        [x509.DNSName(n) for n in dns] + [x509.IPAddress(ipaddress.ip_address(a)) for a in ips]
    )


def issue(certs_dir: Path, role: Role, extra_names: Iterable[str] = ()) -> None:
    """Issue (or re-issue) the certificate of one role, signed by the local CA."""
    ca = load_ca(certs_dir)
    dns = [server_name(role), "localhost", *extra_names]
    cert, key = sign_leaf(
        ca,
        _name(role.value, _hub_id(ca[0])),
        _alt_names(dns, ["127.0.0.1"]),
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
    )
    _write(certs_dir / f"{role.value}-key.pem", key, private=True)
    _write(certs_dir / f"{role.value}.pem", cert)


def issue_broker(certs_dir: Path, names: Iterable[str] = ()) -> None:
    """The MQTT broker's TLS certificate (``mqtt-broker.pem``, components/mqtt-tls): a
    server certificate for ``roost-mosquitto`` (the hub's mqtt_host under k3s), localhost
    and ``names``, the LAN addresses or host names Home Assistant connects to."""
    ca = load_ca(certs_dir)
    extra = list(names)
    ips = ["127.0.0.1", *(n for n in extra if _is_ip(n))]
    dns = [BROKER_NAME, "localhost", *(n for n in extra if not _is_ip(n))]
    cert, key = sign_leaf(
        ca,
        _name(BROKER, _hub_id(ca[0])),
        _alt_names(dns, ips),
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
    )
    _write(certs_dir / f"{BROKER}-key.pem", key, private=True)
    _write(certs_dir / f"{BROKER}.pem", cert)


def issue_leaf(certs_dir: Path, stem: str, names: Iterable[str]) -> None:
    """Issue ``<stem>.pem`` and ``<stem>-key.pem`` (a server certificate, common name
    ``stem``), signed by the local CA, for ``names`` (DNS names or IP addresses) and
    127.0.0.1: ``roost run``'s home broker TLS listener (cli/broker.py)."""
    ca = load_ca(certs_dir)
    every = list(dict.fromkeys([*names, "127.0.0.1"]))
    cert, key = sign_leaf(
        ca,
        _name(stem, _hub_id(ca[0])),
        _alt_names([n for n in every if not _is_ip(n)], [n for n in every if _is_ip(n)]),
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
    )
    _write(certs_dir / f"{stem}-key.pem", key, private=True)
    _write(certs_dir / f"{stem}.pem", cert)


@dataclass(frozen=True)
class TlsFiles:
    """A TLS server's certificate and key (signed by the CA) and the CA clients trust."""

    ca: Path
    cert: Path
    key: Path


def ensure_leaf(certs_dir: Path, stem: str, names: Iterable[str]) -> TlsFiles:
    """``<stem>.pem`` valid for every one of ``names``, (re-)issued with :func:`issue_leaf`
    when missing or when it does not name them all: a TLS server's certificate from
    this CA (the home broker's TLS listener, the fleet's SuperLink)."""
    tls = TlsFiles(certs_dir / "ca.pem", certs_dir / f"{stem}.pem", certs_dir / f"{stem}-key.pem")
    wanted = set(names)
    if not tls.cert.is_file() or not wanted <= leaf_names(tls.cert):
        issue_leaf(certs_dir, stem, sorted(wanted))
    return tls


def leaf_names(path: Path) -> set[str]:
    """The DNS names and IP addresses a certificate is valid for."""
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = san.get_values_for_type(x509.DNSName)
    ips = san.get_values_for_type(x509.IPAddress)
    return {*dns, *(str(ip) for ip in ips)}


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def ensure_certs(certs_dir: Path, hub_id: str = "local", roles: Iterable[Role] = Role) -> bool:
    """Create the CA and any missing role certificates. Returns True if anything was made."""
    # A renewal interrupted after its commit point is completed first (cert_renewal.py).
    if certs_dir.is_dir():
        finish_pending(certs_dir)
    made = False
    if not (certs_dir / "ca.pem").is_file():
        create_ca(certs_dir, hub_id)
        made = True
    for role in roles:
        if not (certs_dir / f"{role.value}.pem").is_file():
            issue(certs_dir, role)
            made = True
    if not (certs_dir / LOCAL_CANDIDATE_KEY).is_file():
        # The hub's key for local (personalized) model candidates; see
        # services/modelstore/local_key.py. Trusted for local candidates only.
        key = ed25519.Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        _write(certs_dir / LOCAL_CANDIDATE_KEY, pem, private=True)
        _write(certs_dir / LOCAL_CANDIDATE_PUB, base64.b64encode(raw) + b"\n")
        made = True
    if made:
        log.info("certificates ready in %s", certs_dir)
    return made


def load_identity(certs_dir: Path, role: Role) -> Identity:
    try:
        return Identity(
            ca_pem=(certs_dir / "ca.pem").read_bytes(),
            cert_pem=(certs_dir / f"{role.value}.pem").read_bytes(),
            key_pem=(certs_dir / f"{role.value}-key.pem").read_bytes(),
        )
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"mTLS material for role '{role.value}' missing in {certs_dir}: "
            f"run `roost certs init --dir {certs_dir}`"
        ) from e


def describe(certs_dir: Path) -> list[tuple[str, str, str]]:
    """(file, subject CN, not-after) for `roost certs show`."""
    rows = []
    for path in sorted(certs_dir.glob("*.pem")):
        if path.name.endswith("-key.pem"):
            continue
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        rows.append((path.name, str(cn), cert.not_valid_after_utc.isoformat()))
    return rows
