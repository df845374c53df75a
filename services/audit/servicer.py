"""gRPC servicer of the audit service: append, query, get, checkpoints and proofs."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any

from prometheus_client import Counter, Gauge

from roost.audit.v1 import audit_service_pb2 as pb
from roost.audit.v1 import audit_service_pb2_grpc as pb_grpc
from services.audit import limits
from services.audit.bundle_format import ExportFilters, LoggedRange
from services.audit.checkpoint import NoteSigner
from services.audit.log import AuditLog, SignedCheckpoint
from services.audit.witness_client import WitnessPool
from services.kit.auth import Policy, Role
from services.kit.call_streams import ordered_replies
from services.kit.errors import InvalidArgument

APPENDED = Counter(
    "roost_audit_decisions_appended_total", "Decisions durably appended (retries excluded)."
)
LOG_SIZE = Gauge("roost_audit_log_entries", "Entries in the decision log.")
CHECKPOINT_SIZE = Gauge(
    "roost_audit_checkpoint_tree_size", "Tree size of the latest signed checkpoint."
)

EXPORTED_BYTES = Counter(
    "roost_audit_export_bytes_total", "Bytes of export bundles streamed to auditors."
)
ERASED = Counter(
    "roost_audit_inputs_erased_total",
    "Stored decision inputs erased (their leaves and proofs stay).",
    ["cause"],
)

logger = logging.getLogger(__name__)

_SVC = "/roost.audit.v1.AuditService/"
_WRITERS = frozenset({Role.HUB, Role.UPDATE, Role.PERSONALIZATION})
_READERS = frozenset({Role.HUB, Role.UPDATE, Role.AUDITOR, Role.ADMIN})
POLICY: Policy = {
    _SVC + "AppendDecisions": _WRITERS,
    _SVC + "AppendDecisionsStream": frozenset({Role.HUB}),
    # Personalization reads back its privacy records (the ledger's cross-check).
    _SVC + "QueryDecisions": _READERS | {Role.PERSONALIZATION},
    # Personalization reads the inputs of a decision a homeowner labelled.
    _SVC + "GetDecision": _READERS | {Role.PERSONALIZATION},
    _SVC + "GetCheckpoint": _READERS,
    _SVC + "GetInclusionProof": _READERS,
    _SVC + "GetConsistencyProof": _READERS,
    _SVC + "ExportDecisions": _READERS,
    _SVC + "RedactInputs": frozenset({Role.ADMIN}),
}


def _start_us(request: pb.QueryDecisionsRequest | pb.ExportDecisionsRequest) -> int | None:
    present = request.HasField("start_time")
    return limits.optional_timestamp_us(request.start_time, present, "start_time")


def _end_us(request: pb.QueryDecisionsRequest | pb.ExportDecisionsRequest) -> int | None:
    present = request.HasField("end_time")
    return limits.optional_timestamp_us(request.end_time, present, "end_time")


def checkpoint_origin(hub_id: str) -> str:
    """The checkpoint origin line, which is also the signer key's name."""
    return f"roost.local/hub/{hub_id}"


async def run_checkpointer(
    log: AuditLog,
    signer: NoteSigner,
    interval_seconds: float,
    on_signed: Callable[[], None] | None = None,
) -> None:
    """Re-signs the checkpoint every ``interval_seconds`` if the tree grew (until
    cancelled); then calls ``on_signed`` (the witnesses' submitter)."""
    while True:
        await asyncio.sleep(interval_seconds)
        try:
            cp = await log.checkpoint(signer)
        except Exception:
            logger.exception("audit checkpoint signing failed")
            continue
        CHECKPOINT_SIZE.set(cp.size)
        if on_signed is not None:
            on_signed()


async def run_retention(
    log: AuditLog,
    *,
    hub_id: str,
    inputs_retention_days: float,
    checkpoint_keep_days: float,
    interval_seconds: float,
) -> None:
    """Erases stored inputs older than the retention period and thins old checkpoints,
    now and then every ``interval_seconds`` (until cancelled)."""
    day_us = 86_400_000_000
    while True:
        now_us = time.time_ns() // 1000
        try:
            if inputs_retention_days > 0:
                cutoff = now_us - int(inputs_retention_days * day_us)
                reason = f"retention: stored inputs are kept {inputs_retention_days:g} days"
                pruned, _ = await log.prune_inputs(cutoff, reason, hub_id)
                ERASED.labels("retention").inc(pruned)
            await log.thin_checkpoints(now_us - int(checkpoint_keep_days * day_us))
        except Exception:
            logger.exception("audit retention run failed; retrying in %.0f s", interval_seconds)
        await asyncio.sleep(interval_seconds)


class AuditServicer(pb_grpc.AuditServiceServicer):
    def __init__(
        self,
        log: AuditLog,
        max_append_batch: int,
        signer: NoteSigner,
        witnesses: WitnessPool | None = None,
        witness_wait_seconds: float = 0.0,
    ) -> None:
        self._log = log
        self._max_append_batch = max_append_batch
        self._signer = signer
        self._witnesses = witnesses
        self._witness_wait = witness_wait_seconds

    async def _checkpoint(self) -> SignedCheckpoint:
        """The latest checkpoint, with the witnesses' cosignatures (waited for briefly)."""
        cp = await self._log.checkpoint(self._signer)
        if self._witnesses is not None:
            cp = await self._witnesses.cosign(cp, self._witness_wait)
        return cp

    async def AppendDecisions(
        self, request: pb.AppendDecisionsRequest, context: Any
    ) -> pb.AppendDecisionsResponse:
        return await self._append(request)

    async def AppendDecisionsStream(
        self, requests: AsyncIterable[pb.AppendDecisionsStreamRequest], context: Any
    ) -> AsyncIterator[pb.AppendDecisionsStreamResponse]:
        """AppendDecisions for each request of the stream; each reply once durable, in
        request order. Requests in flight at once share group commits."""
        async for reply in ordered_replies(
            requests,
            lambda m: self._append(m.request),
            pb.AppendDecisionsStreamResponse,
            context=context,
            service=Role.AUDIT.value,
            method="AppendDecisions",
        ):
            yield reply

    async def _append(self, request: pb.AppendDecisionsRequest) -> pb.AppendDecisionsResponse:
        n = len(request.decisions)
        if n == 0:
            raise InvalidArgument("decisions: at least one decision is required")
        if n > self._max_append_batch:
            raise InvalidArgument(
                f"decisions: {n} decisions, at most {self._max_append_batch} per request"
            )
        request_bytes = request.ByteSize()
        if request_bytes > limits.MAX_APPEND_REQUEST_BYTES:
            raise InvalidArgument(
                f"request: {request_bytes} bytes, at most"
                f" {limits.MAX_APPEND_REQUEST_BYTES}: send fewer decisions per request"
            )
        results, size = await self._log.append(request.decisions, consume=True)
        APPENDED.inc(sum(1 for r in results if not r.already_logged))
        LOG_SIZE.set(size)
        response = pb.AppendDecisionsResponse(tree_size=size)
        add = response.results.add
        for r in results:
            add(
                decision_id=r.decision_id,
                index=r.index,
                leaf_hash=r.leaf_hash,
                already_logged=r.already_logged,
            )
        return response

    async def QueryDecisions(
        self, request: pb.QueryDecisionsRequest, context: Any
    ) -> pb.QueryDecisionsResponse:
        limits.check_filters(
            entity_id=request.entity_id,
            model_name=request.model_name,
            model_version=request.model_version,
            action=request.action,
            page_token=request.page_token,
        )
        entries, token = await self._log.query(
            _start_us(request),
            _end_us(request),
            entity_id=request.entity_id,
            model_name=request.model_name,
            model_version=request.model_version,
            action=request.action,
            page_size=request.page_size,
            page_token=request.page_token,
            newest_first=request.newest_first,
        )
        return pb.QueryDecisionsResponse(entries=entries, next_page_token=token)

    async def GetDecision(
        self, request: pb.GetDecisionRequest, context: Any
    ) -> pb.GetDecisionResponse:
        limits.check_decision_id(request.decision_id)
        return pb.GetDecisionResponse(entry=await self._log.get(request.decision_id))

    async def GetCheckpoint(
        self, request: pb.GetCheckpointRequest, context: Any
    ) -> pb.GetCheckpointResponse:
        cp = await self._checkpoint()
        CHECKPOINT_SIZE.set(cp.size)
        return pb.GetCheckpointResponse(
            signed_note=cp.note, tree_size=cp.size, root_hash=cp.root_hash
        )

    async def GetInclusionProof(
        self, request: pb.GetInclusionProofRequest, context: Any
    ) -> pb.GetInclusionProofResponse:
        limits.check_decision_id(request.decision_id)
        size = request.tree_size
        if size == 0:
            # 0 means the latest checkpoint (signed now if the tree grew).
            size = (await self._log.checkpoint(self._signer)).size
        index, hashes = await self._log.inclusion_proof(request.decision_id, size)
        return pb.GetInclusionProofResponse(index=index, tree_size=size, hashes=hashes)

    async def GetConsistencyProof(
        self, request: pb.GetConsistencyProofRequest, context: Any
    ) -> pb.GetConsistencyProofResponse:
        hashes = await self._log.consistency_proof(
            request.first_tree_size, request.second_tree_size
        )
        return pb.GetConsistencyProofResponse(hashes=hashes)

    async def ExportDecisions(
        self, request: pb.ExportDecisionsRequest, context: Any
    ) -> AsyncIterator[pb.ExportDecisionsResponse]:
        limits.check_filters(
            entity_id=request.entity_id,
            model_name=request.model_name,
            model_version=request.model_version,
            action=request.action,
        )
        consistency_from = limits.check_consistency_from(request.consistency_from_sizes)
        filters = ExportFilters(
            start_us=_start_us(request),
            end_us=_end_us(request),
            entity_id=request.entity_id,
            model_name=request.model_name,
            model_version=request.model_version,
            action=request.action,
        )
        logged = None
        if request.HasField("logged_from") or request.HasField("logged_until"):
            logged = LoggedRange(
                limits.optional_timestamp_us(
                    request.logged_from, request.HasField("logged_from"), "logged_from"
                ),
                limits.optional_timestamp_us(
                    request.logged_until, request.HasField("logged_until"), "logged_until"
                ),
            )
        exported = 0
        await self._checkpoint()  # the export's checkpoint, cosigned if witnesses answer
        async for chunk in self._log.export(
            self._signer,
            filters,
            logged=logged,
            consistency_from=consistency_from,
            omit_inputs=request.omit_inputs,
        ):
            exported += len(chunk)
            yield pb.ExportDecisionsResponse(chunk=chunk)
        EXPORTED_BYTES.inc(exported)

    async def RedactInputs(
        self, request: pb.RedactInputsRequest, context: Any
    ) -> pb.RedactInputsResponse:
        limits.check_decision_id(request.decision_id)
        index, redacted_at_us, already = await self._log.redact_inputs(
            request.decision_id, request.reason
        )
        if not already:
            ERASED.labels("redaction").inc()
        response = pb.RedactInputsResponse(redaction_index=max(index, 0))
        response.redacted_at.FromMicroseconds(redacted_at_us)
        return response
