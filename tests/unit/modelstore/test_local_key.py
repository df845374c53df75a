"""The hub's local-candidate key: local versions only, signatures bound to the bundle."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.kit.errors import InvalidArgument, PermissionDenied
from services.modelstore import local_key


def test_local_versions_derive_from_a_release() -> None:
    assert local_key.local_version("1.0.0", 3) == "1.0.0.3"
    assert local_key.local_version("2.10.0", 1) == "2.10.0.1"
    assert local_key.is_local_version("1.0.0.3")
    assert not local_key.is_local_version("1.0.0")
    for base, n in (("1.0", 1), ("1.0.0.1", 1), ("1.0.0", 0)):
        with pytest.raises(InvalidArgument):
            local_key.local_version(base, n)


def test_signatures_bind_name_version_and_bytes() -> None:
    key = Ed25519PrivateKey.generate()
    public = key.public_key()
    sig = local_key.sign(key, "occupancy", "1.0.0.1", b"bundle")
    local_key.verify(public, "occupancy", "1.0.0.1", b"bundle", sig)
    for name, version, data in (
        ("routine", "1.0.0.1", b"bundle"),
        ("occupancy", "1.0.0.2", b"bundle"),
        ("occupancy", "1.0.0.1", b"bundlE"),
    ):
        with pytest.raises(PermissionDenied, match="does not verify"):
            local_key.verify(public, name, version, data, sig)
    with pytest.raises(PermissionDenied, match="only local versions"):
        local_key.verify(public, "occupancy", "1.1.0", b"bundle", sig)
