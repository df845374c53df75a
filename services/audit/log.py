"""Asyncio front of the audit store: one writer thread, group commit, off-loop reads.

``AuditLog.append`` queues its request; a single flusher task hands everything queued
to the writer thread as ONE transaction (one fsync). Each request is validated and
prepared on its own, so an invalid one fails alone: small ones on the event loop before
they queue, large ones on the writer thread just before their group's transaction. (A
thread of their own would overlap preparation with the writer's SQLite work, but on
this hardware the GIL hand-offs between the two cost more than the overlap saved.)
Reads run on another thread with their own read-only connection (WAL readers do not
wait for the writer).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from roost.audit.v1 import audit_service_pb2 as pb
from services.audit.bundle_format import ExportFilters, LoggedRange
from services.audit.checkpoint import Checkpoint, NoteSigner, sign_checkpoint
from services.audit.export import iter_bundle
from services.audit.latest_checkpoint import LatestCheckpoint
from services.audit.records import Appended, PreparedRecord, prepare
from services.audit.store import AuditStore
from services.kit.errors import InvalidArgument, ResourceExhausted, Unavailable

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
AppendOutcome = tuple[list[Appended], int]


# Requests up to this many decisions are prepared on the event loop (about 10 us each),
# so an invalid one fails before it is queued; larger ones on the writer thread, just
# before their group's transaction (no hand-off between threads per request).
_INLINE_PREPARE_MAX = 16


@dataclass(frozen=True, slots=True)
class SignedCheckpoint:
    """A signed C2SP checkpoint note of the tree at ``size``."""

    note: str
    size: int
    root_hash: bytes


@dataclass(slots=True)
class _Request:
    decisions: Sequence[pb.Decision]
    # Prepared on the event loop (small requests), else None: prepared on the writer.
    records: list[PreparedRecord] | None
    consume: bool
    future: asyncio.Future[AppendOutcome]


class AuditLog:
    """The audit log as used by the gRPC servicer. Create with ``await AuditLog.open(path)``."""

    def __init__(
        self,
        path: Path,
        writer: tuple[ThreadPoolExecutor, AuditStore],
        reader: tuple[ThreadPoolExecutor, AuditStore],
        *,
        max_group_records: int,
        max_pending_records: int,
        latest: LatestCheckpoint | None = None,
    ) -> None:
        self._path = path
        # The last signed checkpoint, kept outside the database (no forks).
        self._latest = latest
        self._writer, self._writer_store = writer
        self._reader, self._reader_store = reader
        self._max_group_records = max_group_records
        self._max_pending_records = max_pending_records
        self._pending: deque[_Request] = deque()
        self._pending_records = 0
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False
        # Write transactions committed so far (one per group); for tests and metrics.
        self.commits = 0
        # Latest signed checkpoint; only touched on the writer thread.
        self._checkpoint: SignedCheckpoint | None = None
        # Checkpoints signed so far; for tests and metrics.
        self.checkpoints_signed = 0

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        max_group_records: int = 10_000,
        max_pending_records: int = 200_000,
        latest: LatestCheckpoint | None = None,
    ) -> AuditLog:
        """Opens the store at ``path`` on a dedicated writer thread, plus a reader thread
        (own read-only connection).

        With ``latest``, the store's tree must extend the last checkpoint signed (else
        ``ForkError``), and every new checkpoint is saved there before it is used.

        ``max_group_records`` bounds one transaction (requests are never split);
        appends beyond ``max_pending_records`` queued records get ResourceExhausted.
        """
        loop = asyncio.get_running_loop()
        writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-writer")
        reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-reader")
        try:
            writer_store = await loop.run_in_executor(writer, AuditStore.open, path)
            try:
                if latest is not None:
                    await loop.run_in_executor(writer, latest.check, writer_store)
                reader_store = await loop.run_in_executor(
                    reader, functools.partial(AuditStore.open, path, read_only=True)
                )
            except BaseException:
                await loop.run_in_executor(writer, writer_store.close)
                raise
        except BaseException:
            for executor in (writer, reader):
                executor.shutdown(wait=False)
            raise
        return cls(
            path,
            (writer, writer_store),
            (reader, reader_store),
            max_group_records=max_group_records,
            max_pending_records=max_pending_records,
            latest=latest,
        )

    async def __aenter__(self) -> AuditLog:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def append(
        self, decisions: Sequence[pb.Decision], *, consume: bool = False
    ) -> AppendOutcome:
        """Durably appends ``decisions`` (see ``AuditStore.append``); group-committed.

        ``consume``: the decisions are not used afterwards (a gRPC request's), so their
        ``inputs`` may be cleared in place instead of copying each message.

        If the caller is cancelled after its group started, the decisions may still be
        logged; retrying is safe (appends are idempotent by decision_id).
        """
        if self._closed:
            raise Unavailable("audit log: closed")
        if self._pending and self._pending_records + len(decisions) > self._max_pending_records:
            raise ResourceExhausted("audit log: too many pending appends; retry later")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[AppendOutcome] = loop.create_future()
        if len(decisions) <= _INLINE_PREPARE_MAX:
            request = _Request(decisions, prepare(decisions, consume=consume), consume, future)
        else:
            request = _Request(decisions, None, consume, future)
        self._pending.append(request)
        self._pending_records += len(decisions)
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush(), name="audit-group-commit")
        return await future

    async def query(
        self,
        start_us: int | None,
        end_us: int | None,
        *,
        entity_id: str = "",
        model_name: str = "",
        model_version: str = "",
        action: str = "",
        page_size: int = 0,
        page_token: str = "",
        newest_first: bool = False,
    ) -> tuple[list[pb.LogEntry], str]:
        """See ``AuditStore.query``."""
        return await self._read(
            functools.partial(
                self._reader_store.query,
                start_us,
                end_us,
                entity_id=entity_id,
                model_name=model_name,
                model_version=model_version,
                action=action,
                page_size=page_size,
                page_token=page_token,
                newest_first=newest_first,
            )
        )

    async def get(self, decision_id: str) -> pb.LogEntry:
        """See ``AuditStore.get``."""
        return await self._read(functools.partial(self._reader_store.get, decision_id))

    async def size(self) -> int:
        return await self._read(self._reader_store.size)

    async def root(self, size: int | None = None) -> bytes:
        """See ``AuditStore.root``."""
        return await self._read(functools.partial(self._reader_store.root, size))

    async def inclusion_proof(self, decision_id: str, size: int) -> tuple[int, list[bytes]]:
        """(leaf index, audit path) of a logged decision in the tree of ``size`` leaves."""
        store = self._reader_store

        def prove() -> tuple[int, list[bytes]]:
            index = store.index_of(decision_id)
            return index, store.inclusion_proof(index, size)

        return await self._read(prove)

    async def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        """See ``AuditStore.consistency_proof``."""
        return await self._read(
            functools.partial(self._reader_store.consistency_proof, size1, size2)
        )

    async def checkpoint(self, signer: NoteSigner) -> SignedCheckpoint:
        """A checkpoint of the current tree signed by ``signer`` (origin = its name).

        Signed on the writer thread, so it never races an append; repeated calls at the
        same tree size return the cached note. New notes are recorded in ``checkpoints``.
        """
        if self._closed:
            raise Unavailable("audit log: closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._writer, functools.partial(self._sign_checkpoint, signer)
        )

    async def add_cosignatures(self, size: int, lines: Sequence[str]) -> bool:
        """Adds witness cosignature lines (verified by the caller) to the current
        checkpoint note if it is still at ``size``; a witness's older line is replaced.
        Returns whether the note changed."""
        return await self._write(functools.partial(self._add_cosignatures, size, lines))

    async def redact_inputs(self, decision_id: str, reason: str) -> tuple[int, int, bool]:
        """See ``AuditStore.redact_inputs`` (on the writer thread, between group commits)."""
        return await self._write(
            functools.partial(
                self._writer_store.redact_inputs, decision_id, reason, time.time_ns() // 1000
            )
        )

    async def prune_inputs(
        self, cutoff_us: int, reason: str, hub_id: str
    ) -> tuple[int, int | None]:
        """See ``AuditStore.prune_inputs``; repeats until nothing older is left."""
        total, last_index = 0, None
        while True:
            pruned, index = await self._write(
                functools.partial(
                    self._writer_store.prune_inputs,
                    cutoff_us,
                    reason,
                    hub_id,
                    time.time_ns() // 1000,
                )
            )
            if not pruned:
                return total, last_index
            total, last_index = total + pruned, index

    async def thin_checkpoints(self, keep_after_us: int) -> int:
        """See ``AuditStore.thin_checkpoints``."""
        return await self._write(
            functools.partial(self._writer_store.thin_checkpoints, keep_after_us)
        )

    async def export(
        self,
        signer: NoteSigner,
        filters: ExportFilters,
        *,
        logged: LoggedRange | None = None,
        consistency_from: Sequence[int] = (),
        omit_inputs: bool = False,
    ) -> AsyncIterator[bytes]:
        """Chunks of an export bundle (see ``services.audit.export``) at the latest
        checkpoint, read on a connection and thread of its own so a long export does not
        hold up queries."""
        cp = await self.checkpoint(signer)
        loop = asyncio.get_running_loop()
        thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-export")
        store: AuditStore | None = None
        try:
            store = await loop.run_in_executor(
                thread, functools.partial(AuditStore.open, self._path, read_only=True)
            )
            chunks = iter_bundle(
                store,
                note=cp.note,
                origin=signer.name,
                filters=filters,
                logged=logged,
                consistency_from=consistency_from,
                omit_inputs=omit_inputs,
            )
            while (chunk := await loop.run_in_executor(thread, next, chunks, None)) is not None:
                yield chunk
        finally:
            if store is not None:
                await loop.run_in_executor(thread, store.close)
            thread.shutdown(wait=False)

    async def close(self) -> None:
        """Commits what is queued, then closes the connections and threads."""
        if self._closed:
            return
        self._closed = True
        if self._flusher is not None:
            await asyncio.shield(self._flusher)
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._writer, self._writer_store.close)
            await loop.run_in_executor(self._reader, self._reader_store.close)
        finally:
            for executor in (self._writer, self._reader):
                executor.shutdown(wait=False)
        logger.info("audit log closed after %d commits", self.commits)

    async def _write(self, call: Callable[[], _T]) -> _T:
        if self._closed:
            raise Unavailable("audit log: closed")
        return await asyncio.get_running_loop().run_in_executor(self._writer, call)

    async def _read(self, call: Callable[[], _T]) -> _T:
        if self._closed:
            raise Unavailable("audit log: closed")
        return await asyncio.get_running_loop().run_in_executor(self._reader, call)

    async def _flush(self) -> None:
        """Commits queued requests group by group until the queue is empty."""
        loop = asyncio.get_running_loop()
        group: list[_Request] = []
        try:
            while self._pending:
                group = self._take_group()
                if not group:
                    continue
                try:
                    outcomes = await loop.run_in_executor(self._writer, self._commit_group, group)
                except Exception as exc:
                    logger.exception("audit group commit failed (%d requests)", len(group))
                    for request in group:
                        _settle(request.future, exc)
                    continue
                for request, outcome in zip(group, outcomes, strict=True):
                    _settle(request.future, outcome)
                group = []
        except asyncio.CancelledError:
            # Loop shutdown: nobody will commit the rest. Logged or not, retries are safe.
            for request in (*group, *self._pending):
                _settle(request.future, Unavailable("audit log: shutting down; retry"))
            self._pending.clear()
            self._pending_records = 0
            raise
        finally:
            self._flusher = None

    def _take_group(self) -> list[_Request]:
        """Pops queued requests up to ``max_group_records`` (at least one request)."""
        group: list[_Request] = []
        records = 0
        while self._pending:
            request = self._pending[0]
            size = len(request.decisions)
            if group and records + size > self._max_group_records:
                break
            self._pending.popleft()
            self._pending_records -= size
            if request.future.done():  # Cancelled while queued: not written at all.
                continue
            group.append(request)
            records += size
        return group

    def _sign_checkpoint(self, signer: NoteSigner) -> SignedCheckpoint:
        """Writer thread: signs the current tree unless the cached note covers it."""
        store = self._writer_store
        size = store.tree_size()
        cached = self._checkpoint
        if cached is None and (latest := store.latest_checkpoint()) is not None:
            # After a restart: reuse the last note if it still covers the whole tree.
            latest_size, latest_note = latest
            if latest_size == size:
                cached = SignedCheckpoint(latest_note, size, store.root())
        if (
            cached is not None
            and cached.size == size
            and cached.note.startswith(signer.name + "\n")
        ):
            return cached
        if self._latest is not None:
            self._latest.check(store)  # ForkError: never sign a fork
        root = store.root()
        note = sign_checkpoint(signer, Checkpoint(signer.name, size, root))
        if self._latest is not None:
            self._latest.record(note)  # durable before anyone sees the note
        store.save_checkpoint(size, note)
        self._checkpoint = SignedCheckpoint(note, size, root)
        self.checkpoints_signed += 1
        logger.debug("audit checkpoint signed at tree size %d", size)
        return self._checkpoint

    def _add_cosignatures(self, size: int, lines: Sequence[str]) -> bool:
        """Writer thread: see ``add_cosignatures``."""
        cached = self._checkpoint
        if cached is None or cached.size != size:
            return False
        text, sep, sigs = cached.note.partition("\n\n")
        names = {line.split(" ", 2)[1] for line in lines}
        kept = [line + "\n" for line in sigs.splitlines() if line.split(" ", 2)[1] not in names]
        note = text + sep + "".join(kept) + "".join(lines)
        if note == cached.note:
            return False
        self._writer_store.save_checkpoint(size, note)
        self._checkpoint = SignedCheckpoint(note, size, cached.root_hash)
        return True

    def _commit_group(self, group: list[_Request]) -> list[AppendOutcome | Exception]:
        """Writer thread: prepares the requests not prepared yet, then commits the valid
        ones in one transaction. An invalid request gets its InvalidArgument, alone."""
        batches: list[list[PreparedRecord]] = []
        invalid: dict[int, InvalidArgument] = {}
        for i, request in enumerate(group):
            records = request.records
            if records is None:
                try:
                    records = prepare(request.decisions, consume=request.consume)
                except InvalidArgument as exc:
                    invalid[i] = exc
                    records = []
            batches.append(records)
        results, tree_size = self._writer_store.append_prepared(batches)
        if any(batches):
            self.commits += 1
        return [invalid.get(i, (result, tree_size)) for i, result in enumerate(results)]


def _settle(future: asyncio.Future[AppendOutcome], outcome: AppendOutcome | Exception) -> None:
    if future.done():  # The caller went away (cancelled); its result is not needed.
        return
    if isinstance(outcome, Exception):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
