"""The commitment to a decision's inputs (``Decision.inputs_digest``): salted or plain.

A decision's inputs (sensor readings, time of day) have little entropy, so a plain
SHA-256 of them can be brute-forced from the digest alone, which stays in the signed
record after the inputs are erased. The audit service therefore commits with a fresh
random salt per decision::

    inputs_digest = hex(SHA-256(salt || I))

where ``I`` is the deterministic serialization of the ``DecisionInputs`` without its
``salt`` and ``salt`` is 32 bytes from the OS's CSPRNG. The salt is stored in the
inputs themselves (``DecisionInputs.salt``, field 3, the last field, so the stored bytes
are ``I`` followed by the salt's field), which is how redaction and retention erase
both together: without the salt, the digest says nothing about the inputs.

Entries logged before salting keep their plain digest ``hex(SHA-256(I))``; their stored
inputs have no salt. A verifier tells the two schemes apart by the stored inputs: a
non-empty ``salt`` means salted (it must be 32 bytes), none means plain. Either way a
matching digest needs a SHA-256 preimage, so the stored inputs cannot be swapped under
one scheme for inputs of the other.

Pure (no I/O, no gRPC), so the offline verifier uses it too.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Final

from google.protobuf.message import DecodeError

from roost.audit.v1 import audit_service_pb2 as pb

SALT_BYTES: Final = 32
# Tag of DecisionInputs.salt (field 3, length-delimited) and the length of a salt.
_SALT_FIELD: Final = bytes([3 << 3 | 2, SALT_BYTES])


class InputsError(ValueError):
    """Stored inputs that are not a DecisionInputs, or carry a salt of the wrong size."""


def fresh_salts(count: int) -> bytes:
    """``count`` salts, concatenated: one CSPRNG read for a whole request."""
    return secrets.token_bytes(SALT_BYTES * count)


def salt_inputs(inputs: bytes, salt: bytes) -> tuple[bytes, str]:
    """``(stored, digest)`` for ``inputs``, the deterministic serialization of a
    ``DecisionInputs`` without salt, and a fresh ``salt`` (``SALT_BYTES``, see
    ``fresh_salts``): the bytes to store (with the salt) and the record's digest."""
    return inputs + _SALT_FIELD + salt, hashlib.sha256(salt + inputs).hexdigest()


def stored_digest(stored: bytes) -> str:
    """The ``inputs_digest`` that stored inputs (``DecisionInputs`` bytes) commit to,
    under the scheme they carry: salted when ``salt`` is set, plain otherwise."""
    try:
        inputs = pb.DecisionInputs.FromString(stored)
    except DecodeError:
        raise InputsError("the stored inputs are not a DecisionInputs message") from None
    salt = inputs.salt
    if not salt:
        return hashlib.sha256(stored).hexdigest()
    if len(salt) != SALT_BYTES:
        raise InputsError(f"the inputs' salt is {len(salt)} bytes, not {SALT_BYTES}")
    inputs.ClearField("salt")
    return hashlib.sha256(salt + inputs.SerializeToString(deterministic=True)).hexdigest()
