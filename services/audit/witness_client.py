"""The audit service's side of witnessing: submit each new checkpoint to the witnesses.

The audit service (not the hub: it holds the tree, so it can prove consistency)
submits its latest checkpoint to every configured witness (``audit.witnesses``: one
``"<URL> <witness vkey>"`` per witness) with ``add-checkpoint``: from the size the
witness last cosigned (learnt from its 409 answer on the first call), with a
consistency proof. Valid cosignatures are added to the stored checkpoint note, so
``GetCheckpoint`` and exports carry them. Best effort: a witness that is down or
refuses is retried with exponential backoff, in the background; appends and decisions
never wait for witnesses. ``GetCheckpoint`` and exports wait up to
``audit.witness_wait_seconds`` for the cosignatures of the checkpoint they return.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client import Counter, Gauge

from services.audit.checkpoint import CheckpointError, NoteSigner
from services.audit.cosignature import CosignatureVerifier
from services.audit.log import AuditLog, SignedCheckpoint
from services.audit.witness import SIZE_CONTENT_TYPE, request_body

logger = logging.getLogger(__name__)

SUBMISSIONS = Counter(
    "roost_audit_witness_submissions_total",
    "Checkpoints submitted to witnesses, by witness name and outcome.",
    ["witness", "outcome"],
)
COSIGNED_SIZE = Gauge(
    "roost_audit_witness_cosigned_tree_size",
    "Tree size of the latest checkpoint each witness cosigned.",
    ["witness"],
)

_MAX_RESPONSE_BYTES = 64 * 1024


@dataclass
class WitnessPeer:
    """One configured witness and what the log knows of it."""

    url: str
    verifier: CosignatureVerifier
    # The size the witness last cosigned, as far as we know (0: ask it).
    old_size: int = 0
    # The tree size of the last submission tried (successful or not).
    attempted_size: int = -1
    failures: int = 0
    retry_at: float = 0.0

    @property
    def name(self) -> str:
        return self.verifier.name


def parse_witnesses(specs: Sequence[str]) -> list[WitnessPeer]:
    """``"<URL> <vkey>"`` entries of ``audit.witnesses``; ValueError naming the bad one."""
    peers = []
    for i, spec in enumerate(specs):
        url, _, vkey = spec.strip().partition(" ")
        if not url.startswith(("http://", "https://")) or not vkey.strip():
            raise ValueError(
                f"audit.witnesses[{i}]: want '<http(s) URL prefix> <witness verifier key>'"
            )
        try:
            verifier = CosignatureVerifier.from_vkey(vkey.strip())
        except CheckpointError as exc:
            raise ValueError(f"audit.witnesses[{i}]: {exc}") from None
        peers.append(WitnessPeer(url.rstrip("/"), verifier))
    return peers


def post(url: str, body: bytes, timeout: float) -> tuple[int, str, str]:
    """``(status, content type, body)`` of an HTTP POST (blocking; run it in a thread)."""
    if not url.startswith(("http://", "https://")):
        raise ValueError("witness URL must be http(s)")
    request = urllib.request.Request(url, data=body, method="POST")  # noqa: S310
    request.add_header("Content-Type", "text/plain; charset=utf-8")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            data = response.read(_MAX_RESPONSE_BYTES)
            return response.status, response.headers.get_content_type(), data.decode()
    except urllib.error.HTTPError as exc:
        data = exc.read(_MAX_RESPONSE_BYTES)
        return exc.code, exc.headers.get_content_type(), data.decode(errors="replace")


class WitnessPool:
    """Submits checkpoints to the witnesses in the background (:meth:`run`)."""

    def __init__(
        self,
        log: AuditLog,
        signer: NoteSigner,
        peers: list[WitnessPeer],
        *,
        timeout_seconds: float = 5.0,
        max_backoff_seconds: float = 300.0,
    ) -> None:
        self._log = log
        self._signer = signer
        self.peers = peers
        self._timeout = timeout_seconds
        self._max_backoff = max_backoff_seconds
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()

    def notify(self) -> None:
        """A new checkpoint may exist: submit it soon."""
        self._wake.set()

    async def cosign(self, cp: SignedCheckpoint, wait_seconds: float) -> SignedCheckpoint:
        """Waits (at most ``wait_seconds``) until every witness was tried at ``cp``'s size;
        returns the checkpoint as stored then (with the cosignatures collected)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        self.notify()
        while True:
            self._progress.clear()
            if all(peer.attempted_size >= cp.size for peer in self.peers):
                break
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                await asyncio.wait_for(self._progress.wait(), remaining)
            except TimeoutError:
                break
        return await self._log.checkpoint(self._signer)

    async def run(self) -> None:
        """Submits the latest checkpoint whenever notified or a retry is due (until cancelled)."""
        while True:
            now = time.monotonic()
            retry = [p.retry_at - now for p in self.peers if p.retry_at > now]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(retry, default=None))
            self._wake.clear()
            try:
                cp = await self._log.checkpoint(self._signer)
            except Exception:
                logger.exception("audit witnesses: no checkpoint to submit")
                self._progress.set()
                continue
            await asyncio.gather(*(self._submit(p, cp) for p in self._due(cp)))
            self._progress.set()

    def _due(self, cp: SignedCheckpoint) -> list[WitnessPeer]:
        now = time.monotonic()
        due = []
        for peer in self.peers:
            if peer.old_size == cp.size and peer.failures == 0:
                peer.attempted_size = cp.size  # cosigned already
            elif peer.retry_at > now:
                peer.attempted_size = cp.size  # backing off: do not make anyone wait
            else:
                due.append(peer)
        return due

    async def _submit(self, peer: WitnessPeer, cp: SignedCheckpoint) -> None:
        outcome = "unreachable"
        try:
            outcome = await self._exchange(peer, cp)
        except (OSError, ValueError, CheckpointError) as exc:
            logger.warning("audit witness %s: submission failed: %s", peer.name, exc)
        finally:
            peer.attempted_size = cp.size
            SUBMISSIONS.labels(peer.name, outcome).inc()
        if outcome == "ok":
            peer.failures, peer.retry_at = 0, 0.0
            COSIGNED_SIZE.labels(peer.name).set(cp.size)
        else:
            peer.failures += 1
            backoff = min(self._max_backoff, 2.0 ** min(peer.failures, 16))
            peer.retry_at = time.monotonic() + backoff

    async def _exchange(self, peer: WitnessPeer, cp: SignedCheckpoint) -> str:
        """One add-checkpoint, plus one retry after a 409 that told us the witness's size."""
        for _ in range(2):
            if peer.old_size > cp.size:
                logger.error(
                    "audit witness %s has cosigned %d entries, the log has %d:"
                    " the log was rolled back",
                    peer.name,
                    peer.old_size,
                    cp.size,
                )
                return "ahead"
            old = peer.old_size
            proof = await self._log.consistency_proof(old, cp.size) if 0 < old < cp.size else []
            body = request_body(old, proof, cp.note)
            url = peer.url + "/add-checkpoint"
            status, ctype, text = await asyncio.to_thread(post, url, body, self._timeout)
            if status == 200:
                await self._accept(peer, cp, text)
                return "ok"
            if status == 409 and ctype == SIZE_CONTENT_TYPE and text.strip().isdigit():
                peer.old_size = int(text.strip())
                continue
            logger.warning(
                "audit witness %s refused the checkpoint of %d entries: HTTP %d %s",
                peer.name,
                cp.size,
                status,
                text[:200].strip(),
            )
            return "refused"
        return "conflict"

    async def _accept(self, peer: WitnessPeer, cp: SignedCheckpoint, text: str) -> None:
        lines = [line + "\n" for line in text.splitlines() if line.startswith("\u2014 ")]
        mine = [line for line in lines if peer.verifier.timestamp(cp.note + line) is not None]
        if not mine:
            raise CheckpointError(f"witness {peer.name} answered no valid cosignature")
        await self._log.add_cosignatures(cp.size, mine)
        peer.old_size = cp.size
