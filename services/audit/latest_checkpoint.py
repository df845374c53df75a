"""No forks: the latest signed checkpoint, kept OUTSIDE the database, next to the key.

A log must never sign two different roots for one tree size (C2SP tlog-checkpoint).
The database alone cannot promise that: put an older copy of ``audit.db`` back, or
edit its history, and the service would sign a different tree with the same key.
So every checkpoint is first written here (``<data_dir>/checkpoint.latest``, atomic
and fsynced, see ``services.kit.files``) and only then recorded in the database and
handed to anyone. At start, and before every new signature, the database's tree must
be a consistent extension of this note: a consistency proof from the saved size to
the current tree must verify (equal sizes: equal roots). Otherwise the service refuses,
naming both sizes and roots.

The order makes a crash harmless: a kill between a group commit and the next
checkpoint leaves the file behind the database (an extension, fine); a kill between
this file and the database's ``checkpoints`` row leaves the database's table one
checkpoint behind (fine: the tree is what is compared).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from services.audit.checkpoint import Checkpoint, CheckpointError, NoteVerifier, verify_checkpoint
from services.audit.merkle import ProofError, verify_consistency
from services.kit.errors import FailedPrecondition
from services.kit.files import write_atomic

logger = logging.getLogger(__name__)

FILE_NAME = "checkpoint.latest"


class ForkError(FailedPrecondition):
    """The database's tree is not a consistent extension of the last signed checkpoint."""


class Tree(Protocol):
    """What the check needs of the store (``services.audit.store.AuditStore``)."""

    def tree_size(self) -> int: ...

    def root(self, size: int | None = None) -> bytes: ...

    def consistency_proof(self, size1: int, size2: int | None = None) -> list[bytes]: ...

    def latest_checkpoint(self) -> tuple[int, str] | None: ...


@dataclass(frozen=True)
class SavedCheckpoint:
    checkpoint: Checkpoint
    note: str


class LatestCheckpoint:
    """``<data_dir>/checkpoint.latest``: the last note this service signed."""

    def __init__(self, path: Path, verifier: NoteVerifier) -> None:
        self.path = path
        self._verifier = verifier

    def load(self) -> SavedCheckpoint | None:
        """The saved note, verified with the service's key; None if there is none yet."""
        try:
            note = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise FailedPrecondition(
                f"{self.path}: cannot read the saved checkpoint: {exc}"
            ) from None
        return SavedCheckpoint(self._verify(note, str(self.path)), note)

    def record(self, note: str) -> None:
        """Saves ``note`` (a checkpoint signed by this service) durably, before it is used."""
        write_atomic(self.path, note.encode("utf-8"), 0o644, durable=True)

    def check(self, tree: Tree) -> SavedCheckpoint | None:
        """ForkError unless ``tree`` extends the saved checkpoint. Without a saved one
        (first start, or an upgrade), the database's latest checkpoint is adopted."""
        saved = self.load()
        if saved is None:
            saved = self._adopt(tree)
            if saved is None:
                return None
            self.record(saved.note)
        cp = saved.checkpoint
        size, root = tree.tree_size(), tree.root()
        if cp.size > size:
            raise ForkError(
                f"audit database: its tree has {size} entries (root {root.hex()}) but this"
                f" service already signed a checkpoint of {cp.size} entries (root"
                f" {cp.root_hash.hex()}, saved in {self.path}): the database is older than"
                " that checkpoint (a backup put back?); refusing to sign a fork. Restore the"
                " database that matches the checkpoint."
            )
        try:
            proof = [] if cp.size == size else tree.consistency_proof(cp.size, size)
            verify_consistency(cp.size, size, proof, cp.root_hash, root)
        except (ProofError, FailedPrecondition) as exc:
            raise ForkError(
                f"audit database: its tree of {size} entries (root {root.hex()}) is not an"
                f" extension of the checkpoint this service signed at {cp.size} entries (root"
                f" {cp.root_hash.hex()}, saved in {self.path}): the log's history was changed;"
                f" refusing to sign a fork ({exc})"
            ) from None
        return saved

    def _adopt(self, tree: Tree) -> SavedCheckpoint | None:
        latest = tree.latest_checkpoint()
        if latest is None:
            return None
        _, note = latest
        saved = SavedCheckpoint(self._verify(note, "the database's latest checkpoint"), note)
        logger.warning(
            "audit: no %s beside the key; adopting the database's latest checkpoint (%d entries)",
            FILE_NAME,
            saved.checkpoint.size,
        )
        return saved

    def _verify(self, note: str, where: str) -> Checkpoint:
        try:
            return verify_checkpoint(self._verifier, note, self._verifier.name)
        except CheckpointError as exc:
            raise FailedPrecondition(
                f"{where}: not a checkpoint signed by this service's key"
                f" {self._verifier.name}: {exc}"
            ) from None
