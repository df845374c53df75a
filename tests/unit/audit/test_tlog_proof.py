"""C2SP tlog-proof encoding: round trips, the spec's example, and strict rejections."""

from __future__ import annotations

import base64
import hashlib

import pytest

from services.audit.checkpoint import Checkpoint, NoteSigner, sign_checkpoint
from services.audit.compact_range import MemoryTree
from services.audit.merkle import verify_inclusion
from services.audit.tlog_proof import HEADER, MAX_PROOF_HASHES, TlogProof, TlogProofError

# The example of https://c2sp.org/tlog-proof (C2SP/C2SP tlog-proof.md), verbatim: its
# signatures are elided ("[...]"), so only the proof structure can be checked.
SPEC_EXAMPLE = (
    "c2sp.org/tlog-proof@v1\n"
    "extra YWdlLXYxLjIuMS1kYXJ3aW4tYXJtNjQudGFyLmd6kYXJ3aW4tYXJ\n"
    "index 73894\n"
    "gSKyXoYZUgZ6jduWYrkDOARinOMGJveXjgMkBTcdPlQ=\n"
    "B95lDa8R83lS8n0eG+o0buTxRKQTYFi//1U8anccXmA=\n"
    "EKNzoDWG8LGC0Yp9o+sv3qllpMP9uHQ9B20KNL+Q1zs=\n"
    "RoopEkOdqkYqMB4MJXrbt/hMjOxsVn0IrWjpz1ZMMes=\n"
    "AHCioX9nLjsrse6YhjRRmk1WUEirVOLLRoOQ6vfO5vk=\n"
    "\n"
    "example.com/fancylog\n"
    "109482\n"
    "sFodV/vSp5O8n9a8QpW6PRY97tfOSW5bsc2Xl/EQi08=\n"
    "\n"
    "\u2014 example.com/fancylog hI2DJw[...]1roloI=\n"
    "\u2014 witness1.example mJirIklj[...]qY9v2B/5bg==\n"
    "\u2014 witness2.example TnKKVHLX[...]xwYwrSjgow==\n"
    "\u2014 witness3.example S4X82uH5[...]3oEcROGLFQ==\n"
)

NOTE = (
    "example.com/log\n"
    "5\n"
    "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    "\n"
    "\u2014 example.com/log AAAAAA==\n"
)
H1 = hashlib.sha256(b"1").digest()
H2 = hashlib.sha256(b"2").digest()
B1 = base64.b64encode(H1).decode()
B2 = base64.b64encode(H2).decode()


def text(*lines: str, checkpoint: str = NOTE) -> str:
    return "".join(line + "\n" for line in lines) + "\n" + checkpoint


# ------------------------------------------------------------------ round trips


def test_spec_example_parses_and_round_trips() -> None:
    proof = TlogProof.parse(SPEC_EXAMPLE)
    assert proof.index == 73894
    assert len(proof.hashes) == 5
    assert all(len(h) == 32 for h in proof.hashes)
    assert proof.hashes[0] == base64.b64decode("gSKyXoYZUgZ6jduWYrkDOARinOMGJveXjgMkBTcdPlQ=")
    assert proof.extra == base64.b64decode("YWdlLXYxLjIuMS1kYXJ3aW4tYXJtNjQudGFyLmd6kYXJ3aW4tYXJ")
    assert proof.checkpoint.startswith("example.com/fancylog\n109482\n")
    assert proof.checkpoint.endswith("3oEcROGLFQ==\n")
    assert proof.marshal() == SPEC_EXAMPLE


@pytest.mark.parametrize(
    "proof",
    [
        TlogProof(0, (), NOTE),
        TlogProof(7, (H1, H2), NOTE),
        TlogProof(7, (H1,), NOTE, extra=b"record"),
        TlogProof(2**64 - 1, tuple([H1] * MAX_PROOF_HASHES), NOTE, extra=b"\x00" * 100),
    ],
)
def test_round_trip(proof: TlogProof) -> None:
    encoded = proof.marshal()
    assert encoded.startswith(HEADER + "\n")
    assert TlogProof.parse(encoded) == proof


def test_marshal_layout() -> None:
    proof = TlogProof(12, (H1, H2), NOTE, extra=b"hi")
    assert proof.marshal() == text(HEADER, "extra aGk=", "index 12", B1, B2)
    assert TlogProof(0, (), NOTE).marshal() == text(HEADER, "index 0")


def test_real_inclusion_proof_and_signed_note_verify_after_round_trip() -> None:
    records = [f"record {i}".encode() for i in range(13)]
    tree = MemoryTree(hashlib.sha256(b"\x00" + r).digest() for r in records)
    signer = NoteSigner.generate("example.com/log")
    note = sign_checkpoint(signer, Checkpoint(signer.name, tree.size, tree.root()))
    for i, record in enumerate(records):
        encoded = TlogProof(i, tuple(tree.inclusion_proof(i)), note, record).marshal()
        proof = TlogProof.parse(encoded)
        assert proof.extra is not None
        cp = Checkpoint.parse(signer.verifier().verify(proof.checkpoint))
        verify_inclusion(
            hashlib.sha256(b"\x00" + proof.extra).digest(),
            proof.index,
            cp.size,
            proof.hashes,
            cp.root_hash,
        )


# ------------------------------------------------------------------ rejections


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("", "no empty line"),
        (HEADER + "\nindex 0\n" + NOTE.replace("\n\n", "\n"), "no empty line"),
        (text("c2sp.org/tlog-proof@v2", "index 0"), "line 1 must be"),
        (text("c2sp.org/tlog-proof@v1 ", "index 0"), "line 1 must be"),
        (text("C2SP.org/tlog-proof@v1", "index 0"), "line 1 must be"),
        ("\ufeff" + text(HEADER, "index 0"), "line 1 must be"),
        (text(HEADER + "\r", "index 0"), "line 1 must be"),
        (text(HEADER), "missing the 'index <n>' line"),
        (text(HEADER, "extra aGk="), "missing the 'index <n>' line"),
        (text(HEADER, "index"), r"want 'index <n>'"),
        (text(HEADER, "index  1"), "not a decimal"),
        (text(HEADER, "Index 1"), r"want 'index <n>'"),
        (text(HEADER, "index 01"), "not a decimal without leading zeros"),
        (text(HEADER, "index 00"), "not a decimal without leading zeros"),
        (text(HEADER, "index -1"), "not a decimal"),
        (text(HEADER, "index +1"), "not a decimal"),
        (text(HEADER, "index 1.0"), "not a decimal"),
        (text(HEADER, "index 0x10"), "not a decimal"),
        (text(HEADER, "index 1 "), "not a decimal"),
        (text(HEADER, "index \u0661"), "not a decimal"),  # Arabic-Indic digit one
        (text(HEADER, "index 18446744073709551616"), "does not fit in 64 bits"),
        (text(HEADER, "index 123456789012345678901"), "not a decimal"),
        (text(HEADER, "index 1\r"), "not a decimal"),
        (text(HEADER, "extra", "index 0"), "want 'extra <base64>'"),
        (text(HEADER, "extra ", "index 0"), "extra data is empty"),
        (text(HEADER, "extra aGk", "index 0"), "extra data is not valid base64"),
        (text(HEADER, "extra aGl=", "index 0"), "extra data is not canonical base64"),
        (text(HEADER, "extra a-k=", "index 0"), "extra data is not valid base64"),
        (text(HEADER, "extra  aGk=", "index 0"), "extra data is not valid base64"),
        (text(HEADER, "index 0", "extra aGk="), "line 3: proof hash is not valid base64"),
        (text(HEADER, "extra aGk=", "extra aGk=", "index 0"), r"line 3: want 'index <n>'"),
        (text(HEADER, "index 0", "index 0"), "line 3: proof hash is not valid base64"),
        (text(HEADER, "index 3", B1[:-1]), "line 3: proof hash is not valid base64"),
        (text(HEADER, "index 3", B1 + " "), "line 3: proof hash is not valid base64"),
        (text(HEADER, "index 3", B1, " " + B2), "line 4: proof hash is not valid base64"),
        (text(HEADER, "index 3", B1.replace("=", "")), "line 3: proof hash is not valid base64"),
        (text(HEADER, "index 3", B1[:-2] + "B="), "line 3: proof hash is not canonical"),
        (text(HEADER, "index 3", base64.b64encode(bytes(31)).decode()), "is 31 bytes, want 32"),
        (text(HEADER, "index 3", base64.b64encode(bytes(33)).decode()), "is 33 bytes, want 32"),
        (text(HEADER, "index 3", base64.b64encode(bytes(64)).decode()), "is 64 bytes, want 32"),
        (text(HEADER, "index 3", base64.urlsafe_b64encode(b"\xff" * 32).decode()), "not valid"),
        (text(HEADER, "index 3", *[B1] * 65), "65 hashes, at most 64"),
        (text(HEADER, "index 0", checkpoint=""), "checkpoint is missing"),
        (text(HEADER, "index 0", checkpoint="\n" + NOTE), "starts with an empty line"),
        (text(HEADER, "index 0", checkpoint=NOTE[:-1]), "does not end with a newline"),
        (text(HEADER, "index 0", checkpoint=NOTE[:-3]), "does not end with a newline"),
    ],
)
def test_rejects_malformed(bad: str, message: str) -> None:
    with pytest.raises(TlogProofError, match=message):
        TlogProof.parse(bad)


def test_rejects_non_text() -> None:
    with pytest.raises(TlogProofError, match="must be text"):
        TlogProof.parse(b"c2sp.org/tlog-proof@v1\n")  # type: ignore[arg-type]


def test_error_is_a_value_error() -> None:
    assert issubclass(TlogProofError, ValueError)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"index": -1}, r"not in \[0, 2\^64\)"),
        ({"index": 2**64}, r"not in \[0, 2\^64\)"),
        ({"index": True}, "must be an integer"),
        ({"index": 1.0}, "must be an integer"),
        ({"hashes": [H1]}, "must be a tuple"),
        ({"hashes": (H1[:31],)}, r"hashes\[0\] must be 32 bytes"),
        ({"hashes": (H1, "x" * 32)}, r"hashes\[1\] must be 32 bytes"),
        ({"hashes": (H1,) * 65}, "65 hashes, at most 64"),
        ({"extra": b""}, "extra must be non-empty bytes"),
        ({"extra": "text"}, "extra must be non-empty bytes"),
        ({"checkpoint": ""}, "checkpoint is missing"),
        ({"checkpoint": NOTE[:-1]}, "does not end with a newline"),
        ({"checkpoint": "\n" + NOTE}, "starts with an empty line"),
        ({"checkpoint": NOTE.encode()}, "checkpoint must be text"),
    ],
)
def test_constructor_validates(kwargs: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {"index": 1, "hashes": (H1,), "checkpoint": NOTE, "extra": None}
    fields.update(kwargs)
    with pytest.raises(TlogProofError, match=message):
        TlogProof(**fields)  # type: ignore[arg-type]


def test_is_frozen() -> None:
    proof = TlogProof(1, (H1,), NOTE)
    with pytest.raises(AttributeError):
        proof.index = 2  # type: ignore[misc]
