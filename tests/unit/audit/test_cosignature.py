"""Witness cosignatures (C2SP tlog-cosignature, Ed25519 cosignature/v1): the signed
message, key IDs and vkeys, and a quorum that forged, foreign or repeated lines cannot
fake."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from services.audit.checkpoint import Checkpoint, CheckpointError, NoteSigner, sign_checkpoint
from services.audit.cosignature import (
    CosignatureVerifier,
    Cosigner,
    require_cosignatures,
)

ORIGIN = "roost.local/hub/cosign"


@pytest.fixture(scope="module")
def note() -> str:
    signer = NoteSigner.generate(ORIGIN)
    return sign_checkpoint(signer, Checkpoint(ORIGIN, 42, bytes(range(32))))


def witness(name: str) -> Cosigner:
    return Cosigner.from_note_signer(NoteSigner.generate(name))


def test_the_line_signs_the_c2sp_message(note: str) -> None:
    w = witness("witness.example/w1")
    line = w.cosign(
        Checkpoint.parse(note.split("\n\n", maxsplit=1)[0] + "\n").body(), timestamp=1679315147
    )
    name, blob64 = line.removeprefix("\u2014 ").removesuffix("\n").split(" ")
    assert name == "witness.example/w1"
    blob = base64.b64decode(blob64)
    public = base64.b64decode(w.vkey().split("+", 2)[2])
    assert public[0] == 0x04
    want_id = hashlib.sha256(name.encode() + b"\n\x04" + public[1:]).digest()[:4]
    assert blob[:4] == want_id
    assert int.from_bytes(blob[4:12], "big") == 1679315147
    message = b"cosignature/v1\ntime 1679315147\n" + (f"{ORIGIN}\n42\n").encode()
    message += base64.b64encode(bytes(range(32))) + b"\n"
    Ed25519PublicKey.from_public_bytes(public[1:]).verify(blob[12:], message)


def test_a_quorum_counts_valid_cosignatures_once(note: str) -> None:
    a, b, c = witness("w.example/a"), witness("w.example/b"), witness("w.example/c")
    text = note.split("\n\n", maxsplit=1)[0] + "\n"
    cosigned = note + a.cosign(text) + b.cosign(text) + b.cosign(text)
    keys = [CosignatureVerifier.from_vkey(w.vkey()) for w in (a, b, c)]
    assert require_cosignatures(cosigned, keys, 2) == ("w.example/a", "w.example/b")
    with pytest.raises(CheckpointError, match="2 valid cosignature"):
        require_cosignatures(cosigned, keys, 3)
    # The same key listed twice still counts once.
    with pytest.raises(CheckpointError, match="1 valid"):
        require_cosignatures(note + a.cosign(text), [keys[0], keys[0]], 2)


def test_a_cosignature_of_another_checkpoint_does_not_count(note: str) -> None:
    a = witness("w.example/a")
    other = Checkpoint(ORIGIN, 43, bytes(32)).body()
    with pytest.raises(CheckpointError, match="does not verify"):
        require_cosignatures(note + a.cosign(other), [a.verifier()], 1)


def test_a_line_under_the_witness_name_by_another_key_is_ignored(note: str) -> None:
    real, impostor = witness("w.example/a"), witness("w.example/a")
    text = note.split("\n\n", maxsplit=1)[0] + "\n"
    with pytest.raises(CheckpointError, match="0 valid"):
        require_cosignatures(note + impostor.cosign(text), [real.verifier()], 1)


@pytest.mark.parametrize(
    "vkey",
    [
        "nameonly",
        "w+zzzzzzzz+AQ==",
        # A checkpoint (type 0x01) key is not a cosignature key.
        NoteSigner.generate("w.example/a").vkey(),
    ],
)
def test_malformed_witness_keys_are_refused(vkey: str) -> None:
    with pytest.raises(CheckpointError, match="witness key"):
        CosignatureVerifier.from_vkey(vkey)
