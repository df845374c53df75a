"""A transparency-log witness (C2SP tlog-witness ``add-checkpoint``), transport-free.

The witness knows the logs it witnesses (origin -> the log's verifier key) and keeps,
per log, the latest checkpoint it cosigned, in a file of its own (atomic, fsynced)
under its state directory. :meth:`Witness.add_checkpoint` takes a request body::

    old <size>\\n
    <base64 consistency proof hash>\\n   (0 to 63 lines)
    \\n
    <signed checkpoint note>

and cosigns the checkpoint only if it extends what the witness saw: a known origin
(else 404), a valid log signature (403), ``old <= size`` (400), ``old`` equal to the
size it last cosigned (409, answering that size as ``text/x.tlog.size``), a
consistency proof that verifies (422), and equal roots at equal sizes (409). A forked
or rolled-back log therefore cannot get a cosignature. Checking and saving are atomic
(one lock), as the spec requires. The HTTP server is ``services.audit.witness_http``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from services.audit.checkpoint import Checkpoint, CheckpointError, NoteVerifier, verify_checkpoint
from services.audit.cosignature import Cosigner
from services.audit.merkle import ProofError, verify_consistency
from services.kit.encoding import b64decode_strict, b64encode
from services.kit.files import write_atomic

logger = logging.getLogger(__name__)

MAX_PROOF_LINES = 63
MAX_REQUEST_BYTES = 64 * 1024
SIZE_CONTENT_TYPE = "text/x.tlog.size"


class WitnessError(Exception):
    """A refused request: its HTTP status and a short reason (never the request's data)."""

    def __init__(self, status: int, reason: str, body: str = "") -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.body = body or reason + "\n"
        self.content_type = SIZE_CONTENT_TYPE if status == 409 and body else "text/plain"


@dataclass(frozen=True)
class Request:
    old_size: int
    proof: list[bytes]
    note: str


def parse_request(body: bytes) -> Request:
    """The parts of an add-checkpoint body; WitnessError(400) if malformed."""
    if len(body) > MAX_REQUEST_BYTES:
        raise WitnessError(413, f"request larger than {MAX_REQUEST_BYTES} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise WitnessError(400, "request is not UTF-8") from None
    head, sep, note = text.partition("\n\n")
    lines = head.split("\n")
    if not sep or not lines[0].startswith("old "):
        raise WitnessError(
            400,
            "want 'old <size>', proof lines, a blank line, then the checkpoint note",
        )
    old_s = lines[0][4:]
    if not old_s.isascii() or not old_s.isdigit() or (old_s != "0" and old_s.startswith("0")):
        raise WitnessError(400, "old size must be a decimal without leading zeros")
    if len(lines) - 1 > MAX_PROOF_LINES:
        raise WitnessError(400, f"more than {MAX_PROOF_LINES} consistency proof lines")
    try:
        proof = [b64decode_strict(line, "proof line") for line in lines[1:]]
    except ValueError as exc:
        raise WitnessError(400, str(exc)) from None
    if any(len(h) != 32 for h in proof):
        raise WitnessError(400, "proof hashes must be 32 bytes")
    return Request(int(old_s), proof, note)


class Witness:
    """Cosigns checkpoints of known logs that extend the latest one it cosigned."""

    def __init__(self, cosigner: Cosigner, logs: list[NoteVerifier], state_dir: Path) -> None:
        self.cosigner = cosigner
        self._logs = {log.name: log for log in logs}
        self._state_dir = state_dir
        self._lock = threading.Lock()

    def add_checkpoint(self, body: bytes) -> str:
        """The cosignature line(s) for a valid request; WitnessError otherwise."""
        request = parse_request(body)
        cp = self._verify(request.note)
        if request.old_size > cp.size:
            raise WitnessError(
                400, f"old size {request.old_size} exceeds the checkpoint's {cp.size}"
            )
        with self._lock:
            latest = self._load(cp.origin)
            latest_size = 0 if latest is None else latest.size
            if request.old_size != latest_size:
                raise WitnessError(
                    409, f"witness has cosigned size {latest_size}", f"{latest_size}\n"
                )
            if latest is not None:
                self._check_consistent(latest, cp, request.proof)
            elif request.proof:
                raise WitnessError(422, "the proof must be empty from size 0")
            self._save(cp, request.note)
            line = self.cosigner.cosign(cp.body())
        logger.info("witness: cosigned %s at size %d", cp.origin, cp.size)
        return line

    def latest(self, origin: str) -> Checkpoint | None:
        with self._lock:
            return self._load(origin)

    def _verify(self, note: str) -> Checkpoint:
        origin = note.split("\n", 1)[0]
        verifier = self._logs.get(origin)
        if verifier is None:
            raise WitnessError(404, "unknown log origin")
        try:
            return verify_checkpoint(verifier, note, origin)
        except CheckpointError:
            raise WitnessError(403, "no valid signature by the log's key") from None

    def _check_consistent(self, latest: Checkpoint, cp: Checkpoint, proof: list[bytes]) -> None:
        if latest.size == cp.size and latest.root_hash != cp.root_hash:
            logger.warning(
                "witness: %s presented a fork at size %d (root %s, cosigned %s)",
                cp.origin,
                cp.size,
                cp.root_hash.hex(),
                latest.root_hash.hex(),
            )
            raise WitnessError(409, "a different root for the size already cosigned: a fork")
        try:
            verify_consistency(latest.size, cp.size, proof, latest.root_hash, cp.root_hash)
        except ProofError:
            logger.warning(
                "witness: %s at size %d is not consistent with size %d it cosigned",
                cp.origin,
                cp.size,
                latest.size,
            )
            raise WitnessError(422, "the consistency proof does not verify") from None

    def _path(self, origin: str) -> Path:
        return self._state_dir / f"{hashlib.sha256(origin.encode()).hexdigest()[:32]}.json"

    def _load(self, origin: str) -> Checkpoint | None:
        try:
            state = json.loads(self._path(origin).read_text())
        except FileNotFoundError:
            return None
        return Checkpoint.parse(state["checkpoint"])

    def _save(self, cp: Checkpoint, note: str) -> None:
        state = {"origin": cp.origin, "checkpoint": cp.body(), "note": note}
        write_atomic(self._path(cp.origin), json.dumps(state).encode(), 0o644, durable=True)


def request_body(old_size: int, proof: list[bytes], note: str) -> bytes:
    """An add-checkpoint request body (the client side)."""
    lines = [f"old {old_size}", *(b64encode(h) for h in proof)]
    return ("\n".join(lines) + "\n\n" + note).encode("utf-8")
