"""Renewing the leaf certificates of a certs directory before they expire (``roost certs renew``).

The CA (``ca.pem``, ``ca-key.pem``) is kept, so every peer keeps trusting the renewed
certificates and old and new ones work side by side while processes restart. Each leaf
(``<name>.pem`` with ``<name>-key.pem``, signed by this CA) that expires within the
window is reissued with a new key, the same subject, names and extended key usages, and
LEAF_DAYS of validity (never past the CA's own expiry).

The set is replaced atomically: the new files are written into ``.renew/`` beside them
(fsynced), then ``.renew/COMMITTED`` marks the set complete, then each file is renamed
over the old one and ``.renew/`` is removed. An interruption before the mark leaves the
old set (the next run discards the half-written one); after it, the next run, or
``finish_pending`` (cert_staging.py, which ``ensure_certs`` calls), completes the
renames. One renewal at a time (a lock file).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec

from services.kit.cert_staging import COMMITTED, STAGING, finish, locked
from services.kit.certs import load_ca, sign_leaf
from services.kit.files import write_atomic

DEFAULT_WITHIN_DAYS = 90


class RenewalRefused(RuntimeError):
    """The renewal cannot help (the CA itself expires) or the directory is not a CA's."""


@dataclass(frozen=True)
class Renewed:
    name: str  # the certificate's file, e.g. "hub.pem"
    old_not_after: dt.datetime
    new_not_after: dt.datetime


def _leaves(certs_dir: Path, ca_cert: x509.Certificate) -> Iterator[tuple[Path, x509.Certificate]]:
    """Certificates in the directory with their key beside them, signed by this CA."""
    for path in sorted(certs_dir.glob("*.pem")):
        if path.name == "ca.pem" or path.name.endswith("-key.pem"):
            continue
        if not path.with_name(f"{path.stem}-key.pem").is_file():
            continue
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        try:
            cert.verify_directly_issued_by(ca_cert)
        except (ValueError, TypeError, InvalidSignature):
            continue  # not this CA's: not ours to reissue
        yield path, cert


def _reissue(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], cert: x509.Certificate
) -> tuple[bytes, bytes]:
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    return sign_leaf(ca, cert.subject, names, usages)


def renew(
    certs_dir: Path,
    within: dt.timedelta = dt.timedelta(days=DEFAULT_WITHIN_DAYS),
    *,
    every: bool = False,
    now: dt.datetime | None = None,
) -> list[Renewed]:
    """Reissue every leaf of this CA that expires within ``within`` (``every``: all of
    them, e.g. after a key may have leaked). Returns what was renewed."""
    now = now or dt.datetime.now(dt.UTC)
    if not (certs_dir / "ca-key.pem").is_file():
        raise RenewalRefused(
            f"{certs_dir}: no ca-key.pem; renew where the CA key is kept (docs/deploy.md)"
        )
    with locked(certs_dir):
        finish(certs_dir)
        ca = load_ca(certs_dir)
        ca_until = ca[0].not_valid_after_utc
        if ca_until <= now + within:
            raise RenewalRefused(
                f"the CA itself expires {ca_until:%Y-%m-%d}: renewed certificates would end "
                "with it; a new CA needs `roost certs init` in a new directory and new "
                "Secrets for every role (docs/deploy.md)"
            )
        due = [
            (p, c)
            for p, c in _leaves(certs_dir, ca[0])
            if every or c.not_valid_after_utc <= now + within
        ]
        if not due:
            return []
        staging = certs_dir / STAGING
        staging.mkdir(mode=0o700)
        done = []
        for path, cert in due:
            new_cert, new_key = _reissue(ca, cert)
            write_atomic(staging / f"{path.stem}-key.pem", new_key, 0o600, durable=True)
            write_atomic(staging / path.name, new_cert, 0o644, durable=True)
            until = x509.load_pem_x509_certificate(new_cert).not_valid_after_utc
            done.append(Renewed(path.name, cert.not_valid_after_utc, until))
        write_atomic(staging / COMMITTED, b"", 0o600, durable=True)
        finish(certs_dir)
        return done
