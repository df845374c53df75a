"""The witness (C2SP tlog-witness add-checkpoint): it cosigns a log's checkpoints only
while each extends the last one it cosigned; forks, rollbacks, bad proofs, unknown
logs and forged signatures are refused with the spec's status codes, and its state
survives a restart."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from services.audit.checkpoint import Checkpoint, NoteSigner, sign_checkpoint
from services.audit.compact_range import MemoryTree
from services.audit.cosignature import Cosigner
from services.audit.merkle import leaf_hash
from services.audit.witness import SIZE_CONTENT_TYPE, Witness, WitnessError, request_body

ORIGIN = "roost.local/hub/witnessed"


class Log:
    """An in-memory log and its signer (the real tree and proof code)."""

    def __init__(self, signer: NoteSigner, tag: str = "") -> None:
        self.signer = signer
        self.tree = MemoryTree()
        self.tag = tag

    def grow(self, n: int) -> None:
        for _ in range(n):
            self.tree.append(leaf_hash(f"{self.tag}{self.tree.size}".encode()))

    def note(self) -> str:
        size = self.tree.size
        origin = self.signer.name
        return sign_checkpoint(self.signer, Checkpoint(origin, size, self.tree.root(size)))

    def request(self, old: int) -> bytes:
        size = self.tree.size
        proof = self.tree.consistency_proof(old, size) if 0 < old < size else []
        return request_body(old, proof, self.note())


@pytest.fixture
def signer() -> NoteSigner:
    return NoteSigner.generate(ORIGIN)


@pytest.fixture
def witness(tmp_path: Path, signer: NoteSigner) -> Witness:
    cosigner = Cosigner.from_note_signer(NoteSigner.generate("witness.test/w1"))
    return Witness(cosigner, [signer.verifier()], tmp_path / "state")


def refused(witness: Witness, body: bytes) -> WitnessError:
    with pytest.raises(WitnessError) as caught:
        witness.add_checkpoint(body)
    return caught.value


def test_a_growing_log_is_cosigned(witness: Witness, signer: NoteSigner) -> None:
    log = Log(signer)
    log.grow(5)
    line = witness.add_checkpoint(log.request(0))
    assert witness.cosigner.verifier().timestamp(log.note() + line) is not None
    log.grow(8)
    witness.add_checkpoint(log.request(5))
    latest = witness.latest(ORIGIN)
    assert latest is not None
    assert latest.size == 13
    # The same checkpoint again is fine (same size, same root).
    witness.add_checkpoint(log.request(13))


def test_a_wrong_old_size_gets_409_with_the_cosigned_size(
    witness: Witness, signer: NoteSigner
) -> None:
    log = Log(signer)
    log.grow(5)
    witness.add_checkpoint(log.request(0))
    log.grow(3)
    err = refused(witness, log.request(0))
    assert (err.status, err.content_type, err.body) == (409, SIZE_CONTENT_TYPE, "5\n")


def test_a_fork_is_refused(witness: Witness, signer: NoteSigner) -> None:
    honest, forked = Log(signer), Log(signer, tag="forged")
    honest.grow(10)
    witness.add_checkpoint(honest.request(0))
    # The same size with another root.
    forked.grow(10)
    err = refused(witness, forked.request(10))
    assert err.status == 409
    # A larger forked tree: no consistency proof from the cosigned size verifies.
    forked.grow(6)
    assert refused(witness, forked.request(10)).status == 422
    latest = witness.latest(ORIGIN)
    assert latest is not None
    assert latest.root_hash == honest.tree.root(10)


def test_a_rollback_is_refused(witness: Witness, signer: NoteSigner) -> None:
    log = Log(signer)
    log.grow(10)
    witness.add_checkpoint(log.request(0))
    older = Log(signer)
    older.grow(6)  # the same history, but shorter: an older copy put back
    assert refused(witness, older.request(10)).status == 400
    assert refused(witness, older.request(6)).status == 409


def test_unknown_logs_and_bad_signatures(witness: Witness) -> None:
    stranger = Log(NoteSigner.generate("roost.local/hub/stranger"))
    stranger.grow(2)
    assert refused(witness, stranger.request(0)).status == 404
    impostor = Log(NoteSigner.generate(ORIGIN))  # the right name, another key
    impostor.grow(2)
    assert refused(witness, impostor.request(0)).status == 403


@pytest.mark.parametrize(
    "body",
    [b"", b"old 01\n\n", b"new 0\n\nx", b"old 0\nnot-base64\n\nx", b"\xff\xfe", b"old 0"],
)
def test_malformed_requests_get_400(witness: Witness, body: bytes) -> None:
    assert refused(witness, body).status == 400


def test_the_state_survives_a_restart(witness: Witness, signer: NoteSigner, tmp_path: Path) -> None:
    log = Log(signer)
    log.grow(4)
    witness.add_checkpoint(log.request(0))
    again = Witness(witness.cosigner, [signer.verifier()], tmp_path / "state")
    forked = Log(signer, tag="x")
    forked.grow(4)
    assert refused(again, forked.request(0)).body == "4\n"
    assert refused(again, forked.request(4)).status == 409


def test_concurrent_submissions_never_roll_back(witness: Witness, signer: NoteSigner) -> None:
    """Check-and-save is atomic: of many racing submissions from one old size, only one
    wins, and the witness ends at the largest size it cosigned."""
    log = Log(signer)
    log.grow(1)
    witness.add_checkpoint(log.request(0))
    bodies = []
    for _ in range(8):
        log.grow(1)
        bodies.append(log.request(1))
    wins: list[int] = []

    def submit(body: bytes, size: int) -> None:
        try:
            witness.add_checkpoint(body)
            wins.append(size)
        except WitnessError:
            pass

    threads = [threading.Thread(target=submit, args=(b, i + 2)) for i, b in enumerate(bodies)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    latest = witness.latest(ORIGIN)
    assert latest is not None
    assert latest.size == wins[0]
