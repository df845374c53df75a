"""Signed audit-log checkpoints: C2SP tlog-checkpoint body in a C2SP signed note."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from pathlib import Path

import pytest

from services.audit.checkpoint import (
    Checkpoint,
    CheckpointError,
    KeyFileError,
    NoteSigner,
    NoteVerifier,
    export_vkey,
    load_or_create_signer,
    sign_checkpoint,
    verify_checkpoint,
)

# Interop vectors from golang/mod, sumdb/note/note_test.go (TestNewVerifier, TestNewSigner,
# TestSign, TestOpen; also the package doc of sumdb/note/note.go), golang.org/x/mod/sumdb/note.
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
PETER_SIG = (
    "\u2014 PeterNeumann "
    "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)
ENOCH_SIG = (
    "\u2014 EnochRoot "
    "rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n"
)
GO_NOTE = GO_TEXT + "\n" + PETER_SIG

# The example checkpoint of C2SP/C2SP, tlog-checkpoint.md (its public key is not published,
# so only the body and the note structure can be checked).
C2SP_CHECKPOINT_NOTE = (
    "example.com/behind-the-sofa\n"
    "20852163\n"
    "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    "\n"
    "\u2014 example.com/behind-the-sofa "
    "Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n"
)

ORIGIN = "roost.local/hub/hub-test"
ROOT = hashlib.sha256(b"root").digest()


@pytest.fixture(scope="module")
def signer() -> NoteSigner:
    return NoteSigner.generate(ORIGIN)


def signed(signer: NoteSigner, size: int = 42, exts: tuple[str, ...] = ()) -> str:
    return sign_checkpoint(signer, Checkpoint(ORIGIN, size, ROOT, exts))


# ------------------------------------------------------------------ Go interop vectors


def test_go_vectors_keys() -> None:
    s = NoteSigner.from_skey(PETER_SKEY)
    assert s.skey() == PETER_SKEY
    assert s.vkey() == PETER_VKEY
    assert export_vkey(s) == PETER_VKEY
    assert s.name == "PeterNeumann"
    assert s.key_id == 0xC74F20A3
    v = NoteVerifier.from_vkey(PETER_VKEY)
    assert v.vkey() == PETER_VKEY
    assert v.key_id == 0xC74F20A3
    assert NoteVerifier.from_vkey(ENOCH_VKEY).key_id == 0xAF0CFE78


def test_go_vector_sign_is_byte_identical() -> None:
    # Ed25519 is deterministic, so our signature must equal Go's TestSign output exactly.
    assert NoteSigner.from_skey(PETER_SKEY).sign(GO_TEXT) == GO_NOTE


def test_go_vector_open() -> None:
    peter = NoteVerifier.from_vkey(PETER_VKEY)
    enoch = NoteVerifier.from_vkey(ENOCH_VKEY)
    assert peter.verify(GO_NOTE) == GO_TEXT
    # Both signed; each verifier ignores the other's signature.
    both = GO_TEXT + "\n" + PETER_SIG + ENOCH_SIG
    assert peter.verify(both) == GO_TEXT
    assert enoch.verify(both) == GO_TEXT
    # Only Enoch signed: Peter finds no signature of his.
    with pytest.raises(CheckpointError, match="no signature by key PeterNeumann"):
        peter.verify(GO_TEXT + "\n" + ENOCH_SIG)


def test_go_vector_invalid_signature() -> None:
    # TestOpen "Invalid signature": 4 base64 chars inserted into Peter's signature.
    bad = GO_TEXT + "\n" + PETER_SIG[:60] + "ABCD" + PETER_SIG[60:]
    with pytest.raises(CheckpointError, match=r"invalid signature for key PeterNeumann\+c74f20a3"):
        NoteVerifier.from_vkey(PETER_VKEY).verify(bad)


@pytest.mark.parametrize(
    "msg",
    [
        # TestOpen "Invalid encoded message syntax" cases.
        GO_TEXT,
        GO_TEXT + "\n",
        GO_TEXT + "\n" + PETER_SIG[:-1],
        "\x01" + GO_TEXT + "\n" + PETER_SIG,
        "\udcff" + GO_TEXT + "\n" + PETER_SIG,  # invalid UTF-8 (as decoded by surrogateescape)
        GO_TEXT
        + "\n"
        + "\u2014 Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=",
        GO_TEXT + "\n" + PETER_SIG + "Unexpected line.\n",
        # And too many signatures.
        GO_TEXT + "\n" + PETER_SIG * 101,
    ],
)
def test_go_vector_malformed_notes(msg: str) -> None:
    with pytest.raises(CheckpointError, match="malformed note"):
        NoteVerifier.from_vkey(PETER_VKEY).verify(msg)


def test_go_vector_wrong_name_or_hash_is_ignored() -> None:
    v = NoteVerifier.from_vkey(PETER_VKEY)
    misnamed = PETER_SIG.replace("PeterNeumann", "CarmenSandiego")
    wrong_hash = PETER_SIG.replace("x08g", "xxxx")
    for sig in (misnamed, wrong_hash):
        with pytest.raises(CheckpointError, match="no signature by key"):
            v.verify(GO_TEXT + "\n" + sig)
        # ...but they do not spoil a note that also has a good signature.
        assert v.verify(GO_TEXT + "\n" + sig + PETER_SIG) == GO_TEXT


@pytest.mark.parametrize("key", [PETER_VKEY, PETER_SKEY])
def test_go_vector_key_manglings_rejected(key: str) -> None:
    # TestNewVerifier / TestNewSigner: every proper substring and every single-byte
    # increment of the key string must be rejected.
    parse = NoteVerifier.from_vkey if key == PETER_VKEY else NoteSigner.from_skey
    b = key.encode("ascii")
    accepted = []
    for i in range(len(b) + 1):
        for j in range(i + 1, len(b) + 1):
            if (i, j) != (0, len(b)):
                try:
                    parse(b[i:j].decode("ascii"))
                    accepted.append(b[i:j])
                except CheckpointError:
                    pass
    for i in range(len(b)):
        mangled = bytearray(b)
        mangled[i] += 1
        try:
            parse(mangled.decode("ascii"))
            accepted.append(bytes(mangled))
        except CheckpointError:
            pass
    assert accepted == []


@pytest.mark.parametrize(
    "vkey",
    [
        # From TestNewVerifier: wrong key length / unknown algorithm, each with a matching hash.
        "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",
        "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "",
        "PeterNeumann",
        "+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
    ],
)
def test_bad_vkeys(vkey: str) -> None:
    with pytest.raises(CheckpointError):
        NoteVerifier.from_vkey(vkey)


# ------------------------------------------------------------------ C2SP checkpoint example


def test_c2sp_checkpoint_example_body() -> None:
    text, _, _ = C2SP_CHECKPOINT_NOTE.rpartition("\n\n")
    body = text + "\n"
    cp = Checkpoint.parse(body)
    assert cp.origin == "example.com/behind-the-sofa"
    assert cp.size == 20852163
    assert cp.root_hash == base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")
    assert cp.extensions == ()
    assert cp.body() == body


def test_c2sp_checkpoint_example_foreign_signature_is_ignored(signer: NoteSigner) -> None:
    # A note signed by an unknown key is rejected by our verifier, and the foreign line
    # does not spoil a note that also carries our signature.
    v = NoteVerifier.from_vkey(PETER_VKEY)
    with pytest.raises(CheckpointError, match="no signature by key"):
        v.verify(C2SP_CHECKPOINT_NOTE)
    text = C2SP_CHECKPOINT_NOTE.split("\n\n", maxsplit=1)[0] + "\n"
    peter_line = NoteSigner.from_skey(PETER_SKEY).sign(text).split("\n\n")[1]
    cosigned = C2SP_CHECKPOINT_NOTE + peter_line
    assert Checkpoint.parse(v.verify(cosigned)).size == 20852163


# ------------------------------------------------------------------ round trips


@pytest.mark.parametrize("size", [0, 1, 42, 2**64 - 1])
def test_checkpoint_round_trip(signer: NoteSigner, size: int) -> None:
    note = signed(signer, size)
    cp = verify_checkpoint(NoteVerifier.from_vkey(export_vkey(signer)), note, ORIGIN)
    assert cp == Checkpoint(ORIGIN, size, ROOT)


def test_checkpoint_body_format() -> None:
    cp = Checkpoint(ORIGIN, 7, bytes(32), ("ext one", "ext2"))
    assert cp.body() == f"{ORIGIN}\n7\n{'A' * 43}=\next one\next2\n"
    assert Checkpoint.parse(cp.body()) == cp


def test_note_format(signer: NoteSigner) -> None:
    note = signed(signer)
    body, sig_line = note.split("\n\n")
    assert body + "\n" == Checkpoint(ORIGIN, 42, ROOT).body()
    prefix = f"\u2014 {ORIGIN} "
    assert sig_line.startswith(prefix)
    assert sig_line.endswith("\n")
    raw = base64.b64decode(sig_line[len(prefix) : -1], validate=True)
    assert len(raw) == 4 + 64
    assert int.from_bytes(raw[:4], "big") == signer.key_id


def test_key_id_definition(signer: NoteSigner) -> None:
    pub = base64.b64decode(signer.vkey().split("+", 2)[2])
    assert pub[0] == 0x01
    assert len(pub) == 33
    expect = hashlib.sha256(ORIGIN.encode() + b"\n" + pub).digest()[:4]
    assert signer.key_id == int.from_bytes(expect, "big")
    assert signer.vkey().split("+")[1] == expect.hex()


def test_skey_round_trip(signer: NoteSigner) -> None:
    again = NoteSigner.from_skey(signer.skey())
    assert again.vkey() == signer.vkey()
    assert again.sign("x\n") == signer.sign("x\n")
    assert signer.skey() not in repr(signer)
    assert signer.verifier().vkey() == signer.vkey()


def test_note_text_may_contain_blank_lines(signer: NoteSigner) -> None:
    for text in ("\n", "a\n\nb\n", "a\n\n"):
        assert signer.verifier().verify(signer.sign(text)) == text


@pytest.mark.parametrize("text", ["", "no newline", "tab\there\n", "cr\r\n"])
def test_sign_rejects_bad_text(signer: NoteSigner, text: str) -> None:
    with pytest.raises(CheckpointError, match="malformed note"):
        signer.sign(text)


@pytest.mark.parametrize("name", ["", "a b", "a+b", "a\tb", "a\u00a0b", "a\nb"])
def test_bad_key_names(name: str) -> None:
    with pytest.raises(CheckpointError, match="invalid key name"):
        NoteSigner.generate(name)


# ------------------------------------------------------------------ tampering


def _tampered(note: str) -> dict[str, str]:
    body, sig = note.split("\n\n")
    lines = body.split("\n")
    origin, size, root = lines
    other_root = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    prefix, b64 = sig.removesuffix("\n").rsplit(" ", 1)
    raw = bytearray(base64.b64decode(b64, validate=True))
    raw[10] ^= 1
    return {
        "size": f"{origin}\n{int(size) + 1}\n{root}\n\n{sig}",
        "root": f"{origin}\n{size}\n{other_root}\n\n{sig}",
        "origin": f"{origin}x\n{size}\n{root}\n\n{sig}",
        "signature": f"{body}\n\n{prefix} {base64.b64encode(bytes(raw)).decode()}\n",
        "extension added": f"{body}\nextension\n\n{sig}",
        "extra trailing line": note + "trailing\n",
        "extra trailing blank line": note + "\n",
        "missing blank line": f"{body}\n{sig}",
        "missing final newline": note[:-1],
        "crlf": note.replace("\n", "\r\n"),
        "no signature lines": f"{body}\n\n",
    }


@pytest.mark.parametrize(
    ("kind", "match"),
    [
        ("size", "invalid signature"),
        ("root", "invalid signature"),
        ("origin", "invalid signature"),
        ("signature", "invalid signature"),
        ("extension added", "invalid signature"),
        ("extra trailing line", "malformed note"),
        ("extra trailing blank line", "malformed note"),
        ("missing blank line", "malformed note"),
        ("missing final newline", "malformed note"),
        ("crlf", "malformed note"),
        ("no signature lines", "malformed note"),
    ],
)
def test_tampered_notes_rejected(signer: NoteSigner, kind: str, match: str) -> None:
    note = signed(signer)
    verifier = NoteVerifier.from_vkey(signer.vkey())
    assert verify_checkpoint(verifier, note, ORIGIN).size == 42
    with pytest.raises(CheckpointError, match=match):
        verifier.verify(_tampered(note)[kind])


def test_wrong_key_rejected(signer: NoteSigner) -> None:
    note = signed(signer)
    other_same_name = NoteSigner.generate(ORIGIN).verifier()
    other_name = NoteSigner.generate("roost.local/hub/other").verifier()
    for v in (other_same_name, other_name):
        with pytest.raises(CheckpointError, match="no signature by key"):
            v.verify(note)


def test_signature_by_our_key_id_under_wrong_key_is_rejected(signer: NoteSigner) -> None:
    # Same name and key ID but signed by another key: must fail, not be ignored, even
    # when a good signature is present too (spec: SHOULD reject the whole note).
    text = Checkpoint(ORIGIN, 1, ROOT).body()
    good = signer.sign(text).split("\n\n")[1]
    impostor_sig = base64.b64decode(NoteSigner.generate(ORIGIN).sign(text).rsplit(" ", 1)[1])[4:]
    forged = signer.key_id.to_bytes(4, "big") + impostor_sig
    forged_line = f"\u2014 {ORIGIN} {base64.b64encode(forged).decode()}\n"
    verifier = signer.verifier()
    assert verifier.verify(text + "\n" + good) == text
    for note in (text + "\n" + forged_line, text + "\n" + good + forged_line):
        with pytest.raises(CheckpointError, match="invalid signature"):
            verifier.verify(note)


def test_origin_mismatch_rejected(signer: NoteSigner) -> None:
    with pytest.raises(CheckpointError, match="origin"):
        verify_checkpoint(signer.verifier(), signed(signer), "roost.local/hub/other")


def test_verified_note_must_be_a_checkpoint(signer: NoteSigner) -> None:
    with pytest.raises(CheckpointError, match="checkpoint needs"):
        verify_checkpoint(signer.verifier(), signer.sign(f"{ORIGIN}\n"), ORIGIN)


# ------------------------------------------------------------------ parse strictness

_R = base64.b64encode(ROOT).decode()
_URLSAFE = base64.urlsafe_b64encode(bytes([0xFB]) * 32).decode()  # has '-' and '_'


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("", "end with a newline"),
        (f"{ORIGIN}\n1\n{_R}", "end with a newline"),
        (f"{ORIGIN}\n1\n", "needs origin, size and root"),
        (f"\n1\n{_R}\n", "origin line is empty"),
        (f"{ORIGIN}\n01\n{_R}\n", "leading zeros"),
        (f"{ORIGIN}\n00\n{_R}\n", "leading zeros"),
        (f"{ORIGIN}\n-1\n{_R}\n", "not a decimal"),
        (f"{ORIGIN}\n+1\n{_R}\n", "not a decimal"),
        (f"{ORIGIN}\n 1\n{_R}\n", "not a decimal"),
        (f"{ORIGIN}\n1_0\n{_R}\n", "not a decimal"),
        (f"{ORIGIN}\n\u0661\n{_R}\n", "not a decimal"),  # Arabic-Indic digit one
        (f"{ORIGIN}\n\n{_R}\n", "not a decimal"),
        (f"{ORIGIN}\n{2**64}\n{_R}\n", "64 bits"),
        (f"{ORIGIN}\n1\n{_R[:-1]}\n", "not valid base64"),
        (f"{ORIGIN}\n1\n{_R.replace('=', '')}\n", "not valid base64"),
        (f"{ORIGIN}\n1\n{_R[:-2]}{chr(ord(_R[-2]) + 1)}=\n", "not canonical base64"),
        (f"{ORIGIN}\n1\n{_URLSAFE}\n", "not valid base64"),
        (f"{ORIGIN}\n1\n{base64.b64encode(ROOT[:31]).decode()}\n", "31 bytes"),
        (f"{ORIGIN}\n1\n{base64.b64encode(ROOT + b'x').decode()}\n", "33 bytes"),
        (f"{ORIGIN}\n1\n{_R}\n\n", "extension lines must be non-empty"),
        (f"{ORIGIN}\n1\n{_R}\next\n\n", "extension lines must be non-empty"),
        (f"{ORIGIN}\r\n1\n{_R}\n", "control character"),
    ],
)
def test_parse_strictness(body: str, match: str) -> None:
    with pytest.raises(CheckpointError, match=match):
        Checkpoint.parse(body)


@pytest.mark.parametrize(
    ("origin", "size", "root", "exts"),
    [
        ("", 1, ROOT, ()),
        ("a\nb", 1, ROOT, ()),
        (ORIGIN, -1, ROOT, ()),
        (ORIGIN, 2**64, ROOT, ()),
        (ORIGIN, True, ROOT, ()),
        (ORIGIN, 1, ROOT[:16], ()),
        (ORIGIN, 1, ROOT, ("",)),
        (ORIGIN, 1, ROOT, ("a\nb",)),
    ],
)
def test_checkpoint_constructor_validates(
    origin: str, size: int, root: bytes, exts: tuple[str, ...]
) -> None:
    with pytest.raises(CheckpointError):
        Checkpoint(origin, size, root, exts)


# ------------------------------------------------------------------ key files


def test_key_file_created_0600_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "checkpoint.skey"
    s1 = load_or_create_signer(path, ORIGIN)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == s1.skey() + "\n"
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.skey"]  # no temp left
    s2 = load_or_create_signer(path, ORIGIN)
    assert s2.vkey() == s1.vkey()


def test_key_file_accepts_go_skey_without_newline(tmp_path: Path) -> None:
    path = tmp_path / "peter.skey"
    path.write_text(PETER_SKEY)
    path.chmod(0o600)
    assert export_vkey(load_or_create_signer(path, "PeterNeumann")) == PETER_VKEY


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o700 | 0o020])
def test_key_file_bad_permissions_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "k.skey"
    load_or_create_signer(path, ORIGIN)
    path.chmod(mode)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_or_create_signer(path, ORIGIN)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"garbage\n",
        PETER_VKEY.encode() + b"\n",
        PETER_SKEY.encode()[:-2] + b"\n",
        b"\xff\xfe",
        PETER_SKEY.encode() + b"\n\n",
    ],
)
def test_key_file_malformed_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "k.skey"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="malformed"):
        load_or_create_signer(path, "PeterNeumann")
    assert path.read_bytes() == content  # never overwritten


def test_key_file_for_other_name_refused(tmp_path: Path) -> None:
    path = tmp_path / "peter.skey"
    path.write_text(PETER_SKEY + "\n")
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="expected"):
        load_or_create_signer(path, ORIGIN)


def test_key_file_symlink_and_directory_refused(tmp_path: Path) -> None:
    real = tmp_path / "real.skey"
    load_or_create_signer(real, ORIGIN)
    link = tmp_path / "link.skey"
    link.symlink_to(real)
    with pytest.raises(KeyFileError, match="symbolic link"):
        load_or_create_signer(link, ORIGIN)
    d = tmp_path / "dir.skey"
    d.mkdir(mode=0o700)
    with pytest.raises(KeyFileError, match="not a regular file"):
        load_or_create_signer(d, ORIGIN)


def test_key_file_created_despite_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        path = tmp_path / "k.skey"
        load_or_create_signer(path, ORIGIN)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
