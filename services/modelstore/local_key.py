"""The hub's local signing key: trusted for local candidates, and for nothing else.

Personalization fine-tunes models on the hub and proposes them to the update service
as *local candidates*. They cannot be signed by the model repository's TUF keys (those
never come near a hub), so they are signed with a key the hub creates for itself:

* the signature covers a domain-separated statement of the candidate bundle's sha256,
  its model name and its version: ``roost-local-candidate/v1\\n<name>\\n<version>\\n<sha256>``;
* the update service accepts such a signature only for a ``Stage`` of a *local*
  candidate sent by the personalization service; the version must be a local version
  (four components: ``<base version>.<n>``, see :func:`local_version`), so a local
  candidate can never pose as, or block, a published release;
* local candidates still go through shadow and A/B, like any update.

The key is Ed25519, created with the mTLS material by ``roost certs init``:
``<certs_dir>/local-candidate-key.pem`` (0600; only personalization mounts it) and its
public half ``local-candidate.pub`` (raw, base64; the update service's trust anchor for
local candidates).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    load_pem_private_key,
)

from services.kit.encoding import b64decode_strict
from services.kit.errors import InvalidArgument, PermissionDenied
from services.modelstore.bundle import parse_version

_DOMAIN = "roost-local-candidate/v1"


def statement(name: str, version: str, bundle_sha256: str) -> bytes:
    return f"{_DOMAIN}\n{name}\n{version}\n{bundle_sha256}".encode()


def local_version(base_version: str, n: int) -> str:
    """The version of the ``n``-th local candidate derived from ``base_version``
    (``1.0.0`` -> ``1.0.0.3``): it sorts after its base and before the next release."""
    parse_version(base_version)  # validates
    if len(base_version.split(".")) != 3:
        raise InvalidArgument(f"version: local candidates derive from x.y.z, not {base_version}")
    if n < 1:
        raise InvalidArgument("n: must be >= 1")
    return f"{base_version}.{n}"


def is_local_version(version: str) -> bool:
    parse_version(version)  # validates
    return len(version.split(".")) == 4


def load_private(path: Path) -> Ed25519PrivateKey:
    """The hub's local-candidate signing key (created by ``roost certs init``)."""
    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable local-candidate key ({e})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 private key")
    return key


def load_public(path: Path) -> Ed25519PublicKey:
    try:
        raw = b64decode_strict(path.read_text().strip(), "its content")
        return Ed25519PublicKey.from_public_bytes(raw)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a local-candidate public key ({e})") from None


def sign(key: Ed25519PrivateKey, name: str, version: str, bundle: bytes) -> bytes:
    return key.sign(statement(name, version, hashlib.sha256(bundle).hexdigest()))


def verify(public: Ed25519PublicKey, name: str, version: str, bundle: bytes, sig: bytes) -> None:
    """PermissionDenied unless ``sig`` is the hub key's signature of this local candidate."""
    if not is_local_version(version):
        raise PermissionDenied(
            f"local candidate {name} {version}: the hub key signs only local versions"
            " (x.y.z.n), never releases"
        )
    try:
        public.verify(sig, statement(name, version, hashlib.sha256(bundle).hexdigest()))
    except InvalidSignature:
        raise PermissionDenied(
            f"local candidate {name} {version}: signature does not verify with the hub's"
            " local-candidate key"
        ) from None
