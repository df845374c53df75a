"""The audit log's witnesses: new checkpoints are submitted (with consistency proofs
from what each witness saw), valid cosignatures are stored with the checkpoint, and a
witness that is down or refuses never blocks the log."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from services.audit.checkpoint import Checkpoint, NoteSigner, sign_checkpoint
from services.audit.cosignature import Cosigner, require_cosignatures
from services.audit.log import AuditLog
from services.audit.merkle import EMPTY_ROOT
from services.audit.witness import MAX_REQUEST_BYTES, SIZE_CONTENT_TYPE, Witness, request_body
from services.audit.witness_client import WitnessPeer, WitnessPool, parse_witnesses, post
from services.audit.witness_http import WitnessServer
from tests.support.audit_records import decision

ORIGIN = "roost.local/hub/client"


@pytest.fixture(scope="module")
def signer() -> NoteSigner:
    return NoteSigner.generate(ORIGIN)


def serve(witness: Witness) -> tuple[WitnessServer, str]:
    server = WitnessServer(("127.0.0.1", 0), witness)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def witness(tmp_path: Path, signer: NoteSigner) -> Iterator[tuple[Witness, str]]:
    cosigner = Cosigner.from_note_signer(NoteSigner.generate("witness.test/w1"))
    w = Witness(cosigner, [signer.verifier()], tmp_path / "witness")
    server, url = serve(w)
    yield w, url
    server.shutdown()
    server.server_close()


@pytest.fixture
async def log(tmp_path: Path) -> AsyncIterator[AuditLog]:
    async with await AuditLog.open(tmp_path / "audit.db") as opened:
        yield opened


async def running(pool: WitnessPool) -> asyncio.Task[None]:
    return asyncio.create_task(pool.run())


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_checkpoints_get_cosigned_as_the_log_grows(
    log: AuditLog, signer: NoteSigner, witness: tuple[Witness, str], tmp_path: Path
) -> None:
    w, url = witness
    peer = WitnessPeer(url, w.cosigner.verifier())
    pool = WitnessPool(log, signer, [peer])
    task = await running(pool)
    try:
        await log.append([decision(i) for i in range(10)])
        cp = await pool.cosign(await log.checkpoint(signer), 10)
        assert require_cosignatures(cp.note, [w.cosigner.verifier()], 1) == ("witness.test/w1",)
        await log.append([decision(i) for i in range(10, 37)])
        cp = await pool.cosign(await log.checkpoint(signer), 10)
        assert cp.size == 37
        assert require_cosignatures(cp.note, [w.cosigner.verifier()], 1)
        assert cp.note.count("\u2014 witness.test/w1 ") == 1  # the older line was replaced
        latest = w.latest(ORIGIN)
        assert latest is not None
        assert latest.size == 37
    finally:
        await stop(task)
    # The cosignature is stored with the checkpoint: it survives a restart.
    await log.close()
    async with await AuditLog.open(tmp_path / "audit.db") as reopened:
        note = (await reopened.checkpoint(signer)).note
        assert require_cosignatures(note, [w.cosigner.verifier()], 1)


async def test_a_witness_that_is_down_never_blocks_the_log(
    log: AuditLog, signer: NoteSigner, tmp_path: Path
) -> None:
    cosigner = Cosigner.from_note_signer(NoteSigner.generate("witness.test/down"))
    server, url = serve(Witness(cosigner, [signer.verifier()], tmp_path / "w"))
    server.server_close()  # nothing listens there any more
    peer = WitnessPeer(url, cosigner.verifier())
    pool = WitnessPool(log, signer, [peer], timeout_seconds=1)
    task = await running(pool)
    try:
        await log.append([decision(i) for i in range(3)])
        cp = await pool.cosign(await log.checkpoint(signer), 10)
        assert cp.size == 3
        assert "witness.test/down" not in cp.note
        assert peer.failures == 1
        assert peer.retry_at > 0
        # Appends go on while it backs off.
        _, size = await log.append([decision(3)])
        assert size == 4
    finally:
        await stop(task)


async def test_a_witness_that_saw_another_history_refuses_it(
    log: AuditLog, signer: NoteSigner, witness: tuple[Witness, str], tmp_path: Path
) -> None:
    w, url = witness
    # The witness first cosigned another database signed with the same key: a fork.
    async with await AuditLog.open(tmp_path / "other.db") as other:
        await other.append([decision(i, action="ignore") for i in range(5)])
        other_pool = WitnessPool(other, signer, [WitnessPeer(url, w.cosigner.verifier())])
        task = await running(other_pool)
        cp = await other_pool.cosign(await other.checkpoint(signer), 10)
        await stop(task)
        assert "witness.test/w1" in cp.note
    peer = WitnessPeer(url, w.cosigner.verifier())
    pool = WitnessPool(log, signer, [peer])
    task = await running(pool)
    try:
        await log.append([decision(i) for i in range(8)])
        cp = await pool.cosign(await log.checkpoint(signer), 10)
        assert "witness.test/w1" not in cp.note
        assert peer.failures == 1
    finally:
        await stop(task)


def test_the_witness_list_is_checked_at_start(witness: tuple[Witness, str]) -> None:
    w, url = witness
    (peer,) = parse_witnesses([f"{url}/ {w.cosigner.vkey()}"])
    assert peer.url == url
    for bad in ("ftp://x " + w.cosigner.vkey(), url, f"{url} not-a-key"):
        with pytest.raises(ValueError, match=r"audit.witnesses\[0\]"):
            parse_witnesses([bad])


def test_the_http_server_speaks_the_protocol(
    witness: tuple[Witness, str], signer: NoteSigner
) -> None:
    _, url = witness
    note = sign_checkpoint(signer, Checkpoint(ORIGIN, 0, EMPTY_ROOT))
    status, _, body = post(url + "/add-checkpoint", request_body(0, [], note), 5)
    assert status == 200
    assert body.startswith("\u2014 witness.test/w1 ")
    assert post(url + "/add-checkpoint", b"old 0\n", 5)[0] == 400
    assert post(url + "/elsewhere", request_body(0, [], note), 5)[0] == 404
    assert post(url + "/add-checkpoint", b"x" * (MAX_REQUEST_BYTES + 1), 5)[0] == 413
    status, ctype, body = post(url + "/add-checkpoint", request_body(3, [], note), 5)
    assert (status, body) == (400, "old size 3 exceeds the checkpoint's 0\n")
    grown = sign_checkpoint(signer, Checkpoint(ORIGIN, 1, bytes(32)))
    status, ctype, body = post(url + "/add-checkpoint", request_body(1, [], grown), 5)
    assert (status, ctype, body) == (409, SIZE_CONTENT_TYPE, "0\n")
