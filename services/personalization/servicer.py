"""gRPC servicer of the personalization service: labels in, DP fine-tuning, the ledger out.

Privacy reasoning of the API:

* Household values come in through exactly two doors, both hub-only: ``RecordLabel``
  (a homeowner's correction; the inputs are read from the audit log, where they were
  stored when the decision was made) and ``AddExamples`` (labelled readings the hub
  observed). They go straight into the local example store. Errors name fields, never
  values; nothing logs them; metrics carry model and scope names only.
* A decision whose stored inputs were erased (right to erasure, or past the audit
  retention) cannot become an example: the erasure is honoured here too.
* Only examples of models this service can personalize (occupancy, routine) are kept:
  data that could never be used is not collected.
* ``EvaluateVersions`` runs the stored inputs through inference (each requested version,
  exactly) and returns, per version, only how many labels were scored and the share it
  got right: no input, label or prediction leaves the service. It is for the update
  service's health gate (and admins and auditors, who can read the same gate).
* The homeowner's learning mode (``SetLearningMode``, hub only; :mod:`.learning_mode`)
  is enforced here: ``local-only`` and ``paused`` refuse ``ComputeFederatedUpdate``
  before anything is reserved, ``paused`` also refuses ``StartTraining``.
* ``StartTraining`` charges the household's privacy budget before any training (see
  ``services.personalization.job_manager``); the budget and every charge are readable by the
  household's roles and auditors (``GetPrivacyBudget``, ``ListLedgerEntries``).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import numpy as np

from roost.common.v1 import common_pb2
from roost.personalization.v1 import personalization_service_pb2 as pb
from roost.personalization.v1 import personalization_service_pb2_grpc as pb_grpc
from services.kit import paging
from services.kit.auth import Policy, Role
from services.kit.errors import FailedPrecondition, InvalidArgument, Unavailable, Unimplemented
from services.kit.tensors import tensor_to_array
from services.kit.timestamps import to_datetime
from services.personalization.accounting import mechanism_epsilon
from services.personalization.fleet_round import FleetRounds
from services.personalization.job_manager import SCOPE, SUPPORTED, JobManager
from services.personalization.job_table import JobRecord, JobTable
from services.personalization.learning_mode import LearningMode
from services.personalization.ledger import PrivacyLedger
from services.personalization.ledger_records import LedgerEntry
from services.personalization.metrics import EPSILON_SPENT, EVALUATIONS, EXAMPLES
from services.personalization.peer_calls import DecisionSource, Predictor
from services.personalization.store import ExampleStore, NewExample, Source

logger = logging.getLogger(__name__)

_SVC = "/roost.personalization.v1.PersonalizationService/"
_READERS = frozenset({Role.HUB, Role.ADMIN, Role.AUDITOR, Role.UPDATE})
POLICY: Policy = {
    _SVC + "RecordLabel": frozenset({Role.HUB}),
    _SVC + "AddExamples": frozenset({Role.HUB}),
    _SVC + "StartTraining": frozenset({Role.HUB, Role.ADMIN}),
    _SVC + "GetJob": _READERS,
    _SVC + "ListJobs": _READERS,
    _SVC + "GetPrivacyBudget": _READERS,
    _SVC + "ListLedgerEntries": _READERS,
    _SVC + "RebuildLedger": frozenset({Role.ADMIN}),
    _SVC + "ComputeFederatedUpdate": frozenset({Role.HUB, Role.ADMIN}),
    # Counts and accuracies only; the health gate of the update service reads them.
    _SVC + "EvaluateVersions": frozenset({Role.UPDATE, Role.ADMIN, Role.AUDITOR}),
    # The homeowner's choice comes from Home Assistant, through the hub only.
    _SVC + "SetLearningMode": frozenset({Role.HUB}),
}

_STATES: Final[dict[str, pb.JobState.ValueType]] = {
    "queued": pb.JOB_STATE_QUEUED,
    "running": pb.JOB_STATE_RUNNING,
    "succeeded": pb.JOB_STATE_SUCCEEDED,
    "failed": pb.JOB_STATE_FAILED,
    "cancelled": pb.JOB_STATE_CANCELLED,
}
_SOURCES: Final[dict[int, Source]] = {
    pb.LABEL_SOURCE_FEEDBACK: "feedback",
    pb.LABEL_SOURCE_OVERRIDE: "override",
    pb.LABEL_SOURCE_SENSOR: "sensor",
    pb.LABEL_SOURCE_IMPORT: "import",
}
_MODES: Final[dict[int, str]] = {
    pb.LEARNING_MODE_LEARNING: "learning",
    pb.LEARNING_MODE_PAUSED: "paused",
    pb.LEARNING_MODE_LOCAL_ONLY: "local-only",
}
#: Examples may be stamped at most this far in the future (clock skew).
_MAX_SKEW: Final = timedelta(days=1)
#: EvaluateVersions: labels scored against when none are asked for by source.
_EVALUATED_SOURCES: Final[tuple[Source, ...]] = ("feedback", "override", "sensor")
#: EvaluateVersions scores at most this many labels (the newest) ...
MAX_EVALUATED_EXAMPLES: Final = 5000
#: ... of at most this many versions, sending inference this many inputs per call.
MAX_EVALUATED_VERSIONS: Final = 4
EVALUATE_CHUNK: Final = 256


class PersonalizationServicer(pb_grpc.PersonalizationServiceServicer):
    def __init__(
        self,
        *,
        manager: JobManager,
        store: ExampleStore,
        ledger: PrivacyLedger,
        job_table: JobTable,
        decisions: DecisionSource,
        max_examples_per_request: int,
        learning_mode: LearningMode,
        predict: Predictor | None = None,
        fleet: FleetRounds | None = None,
    ) -> None:
        self._manager = manager
        self._store = store
        self._ledger = ledger
        self._jobs = job_table
        self._decisions = decisions
        self._max_examples = max_examples_per_request
        self._predict = predict
        self._fleet = fleet
        self._mode = learning_mode

    # ------------------------------------------------------------------ examples

    async def RecordLabel(
        self, request: pb.RecordLabelRequest, context: Any
    ) -> pb.RecordLabelResponse:
        if not request.decision_id:
            raise InvalidArgument("decision_id: required")
        if not request.label:
            raise InvalidArgument("label: required")
        if request.source in (pb.LABEL_SOURCE_UNSPECIFIED, pb.LABEL_SOURCE_FEEDBACK):
            source: Source = "feedback"
        elif request.source == pb.LABEL_SOURCE_OVERRIDE:
            source = "override"
        else:
            raise InvalidArgument("source: RecordLabel takes FEEDBACK or OVERRIDE")
        entry = await self._decisions(request.decision_id)
        decision = entry.decision
        if entry.inputs_redacted or not decision.HasField("inputs"):
            raise FailedPrecondition(
                f"decision {request.decision_id}: its inputs were erased (redacted or past"
                " the audit retention); it cannot become a training example"
            )
        model = decision.model.name
        _, manifest = await asyncio.to_thread(self._manager.supported_manifest, model)
        names = list(decision.inputs.feature_names)
        if names and names != manifest.input.feature_names():
            raise FailedPrecondition(
                f"decision {request.decision_id}: its inputs have other features than the"
                f" active {model} model takes"
            )
        try:
            arr = tensor_to_array(decision.inputs.tensor, manifest.input, "decision.inputs.tensor")
        except InvalidArgument as e:
            raise FailedPrecondition(
                f"decision {request.decision_id}: its inputs do not fit the active {model}"
                f" model ({e})"
            ) from None
        _check_label(request.label, manifest.output_labels, "label")
        observed = (
            decision.decided_at.ToDatetime(tzinfo=UTC)
            if decision.HasField("decided_at")
            else datetime.now(UTC)
        )
        example = NewExample(arr.astype(np.float32), request.label, source, observed)
        ((example_id, _),) = await asyncio.to_thread(self._store.add, model, [example])
        await self._count(model)
        return pb.RecordLabelResponse(example_id=example_id)

    async def AddExamples(
        self, request: pb.AddExamplesRequest, context: Any
    ) -> pb.AddExamplesResponse:
        model = request.model_name
        if not request.examples:
            raise InvalidArgument("examples: at least one example is required")
        if len(request.examples) > self._max_examples:
            raise InvalidArgument(f"examples: at most {self._max_examples} per request")
        source = _SOURCES.get(request.source)
        if source is None:
            raise InvalidArgument("source: required (FEEDBACK, OVERRIDE, SENSOR or IMPORT)")
        _, manifest = await asyncio.to_thread(self._manager.supported_manifest, model)
        now = datetime.now(UTC)
        examples = []
        for i, ex in enumerate(request.examples):
            where = f"examples[{i}]"
            arr = tensor_to_array(ex.input, manifest.input, f"{where}.input")
            _check_label(ex.label, manifest.output_labels, f"{where}.label")
            observed = (
                to_datetime(ex.observed_at, f"{where}.observed_at")
                if ex.HasField("observed_at")
                else now
            )
            if observed > now + _MAX_SKEW:
                raise InvalidArgument(f"{where}.observed_at: is in the future")
            examples.append(NewExample(arr.astype(np.float32), ex.label, source, observed))
        results = await asyncio.to_thread(self._store.add, model, examples)
        total = await self._count(model)
        return pb.AddExamplesResponse(added=sum(1 for _, new in results if new), total=total)

    async def EvaluateVersions(
        self, request: pb.EvaluateVersionsRequest, context: Any
    ) -> pb.EvaluateVersionsResponse:
        model = request.model_name
        if not model:
            raise InvalidArgument("model_name: required")
        versions = _evaluated_versions(request.versions)
        sources = _evaluated_sources(request.sources)
        since = _evaluated_since(request)
        predict = self._predict
        if predict is None:
            raise FailedPrecondition("EvaluateVersions: the inference service is not connected")
        if model not in SUPPORTED:
            # No label of a model this service cannot personalize is ever stored.
            return pb.EvaluateVersionsResponse(
                results=[pb.VersionAccuracy(version=v, accuracy=0.0, count=0) for v in versions]
            )
        _, manifest = await asyncio.to_thread(self._manager.supported_manifest, model)
        labels = manifest.output_labels
        x, y = await asyncio.to_thread(
            self._store.load,
            model,
            labels,
            manifest.input.shape,
            since=since,
            sources=sources,
            newest=MAX_EVALUATED_EXAMPLES,
        )
        truth = [labels[int(i)] for i in y]
        results = []
        for version in versions:
            correct = await _correct(predict, model, version, x, truth)
            n = len(truth)
            results.append(
                pb.VersionAccuracy(version=version, accuracy=correct / n if n else 0.0, count=n)
            )
        EVALUATIONS.labels(model).inc(len(versions))
        logger.debug("%d versions of %s scored against %d labels", len(versions), model, len(y))
        return pb.EvaluateVersionsResponse(results=results)

    async def _count(self, model: str) -> int:
        total = await asyncio.to_thread(self._store.count, model)
        EXAMPLES.labels(model).set(total)
        return total

    # ------------------------------------------------------------------ training

    async def StartTraining(
        self, request: pb.StartTrainingRequest, context: Any
    ) -> pb.StartTrainingResponse:
        self._mode.check_training()
        rec = await self._manager.start(
            request.model_name, request.target_epsilon, request.max_duration_seconds
        )
        return pb.StartTrainingResponse(job=job_pb(rec, self._manager.privacy_unit))

    async def GetJob(self, request: pb.GetJobRequest, context: Any) -> pb.GetJobResponse:
        if not request.job_id:
            raise InvalidArgument("job_id: required")
        rec = await asyncio.to_thread(self._jobs.get, request.job_id)
        return pb.GetJobResponse(job=job_pb(rec, self._manager.privacy_unit))

    async def ListJobs(self, request: pb.ListJobsRequest, context: Any) -> pb.ListJobsResponse:
        start = paging.decode_offset(request.page_token)
        size = paging.page_size(request.page_size)
        recs, more = await asyncio.to_thread(self._jobs.page, start, size)
        token = paging.encode_offset(start + size) if more else ""
        return pb.ListJobsResponse(
            jobs=[job_pb(r, self._manager.privacy_unit) for r in recs], next_page_token=token
        )

    # ------------------------------------------------------------------ the ledger

    async def GetPrivacyBudget(
        self, request: pb.GetPrivacyBudgetRequest, context: Any
    ) -> pb.GetPrivacyBudgetResponse:
        scope = request.scope or SCOPE
        report = await asyncio.to_thread(self._ledger.report, scope)
        budget = pb.PrivacyBudget(
            scope=scope,
            epsilon_limit=report.epsilon_budget,
            epsilon_spent=report.epsilon_spent,
            delta=report.delta,
            privacy_unit=self._manager.privacy_unit,
        )
        budget.period_start.FromDatetime(report.period_start)
        budget.period_end.FromDatetime(report.period_end)
        if scope == SCOPE:
            EPSILON_SPENT.labels(scope).set(report.epsilon_spent)
        return pb.GetPrivacyBudgetResponse(budget=budget)

    async def RebuildLedger(
        self, request: pb.RebuildLedgerRequest, context: Any
    ) -> pb.RebuildLedgerResponse:
        records, mechanisms = await self._manager.rebuild_ledger()
        return pb.RebuildLedgerResponse(records=records, mechanisms=mechanisms)

    async def ListLedgerEntries(
        self, request: pb.ListLedgerEntriesRequest, context: Any
    ) -> pb.ListLedgerEntriesResponse:
        scope = request.scope or SCOPE
        # The token is bound to the scope: a page of one scope cannot continue another.
        start = paging.decode_offset(request.page_token, (scope,))
        size = paging.page_size(request.page_size)
        history = await asyncio.to_thread(self._ledger.history, scope)
        newest = list(reversed(history))
        page = newest[start : start + size]
        policy = self._ledger.policy_for(scope)
        entries = [await asyncio.to_thread(_entry_pb, e, policy.accountant) for e in page]
        more = start + size < len(newest)
        token = paging.encode_offset(start + size, (scope,)) if more else ""
        return pb.ListLedgerEntriesResponse(entries=entries, next_page_token=token)

    async def ComputeFederatedUpdate(
        self, request: pb.ComputeFederatedUpdateRequest, context: Any
    ) -> pb.ComputeFederatedUpdateResponse:
        if self._fleet is None:
            raise Unimplemented("ComputeFederatedUpdate: fleet rounds are not set up here")
        self._mode.check_fleet_round()  # before anything is reserved in the ledger
        response: pb.ComputeFederatedUpdateResponse = await self._fleet.compute(request)
        return response

    async def SetLearningMode(
        self, request: pb.SetLearningModeRequest, context: Any
    ) -> pb.SetLearningModeResponse:
        mode = _MODES.get(request.mode)
        if mode is None:
            raise InvalidArgument("mode: required (LEARNING, PAUSED or LOCAL_ONLY)")
        await asyncio.to_thread(self._mode.set, mode)
        return pb.SetLearningModeResponse(mode=request.mode)


def _evaluated_versions(requested: Any) -> list[str]:
    versions = list(requested)
    if not versions:
        raise InvalidArgument("versions: at least one version is required")
    if len(versions) > MAX_EVALUATED_VERSIONS:
        raise InvalidArgument(f"versions: at most {MAX_EVALUATED_VERSIONS}")
    if not all(versions):
        raise InvalidArgument("versions: a version is empty")
    if len(set(versions)) != len(versions):
        raise InvalidArgument("versions: listed more than once")
    return versions


def _evaluated_since(request: pb.EvaluateVersionsRequest) -> datetime | None:
    if not request.HasField("since"):
        return None
    return to_datetime(request.since, "since")


async def _correct(predict: Predictor, model: str, version: str, x: Any, truth: list[str]) -> int:
    """How many labels of ``truth`` inference's ``version`` predicts (``x`` in chunks)."""
    correct = 0
    for start in range(0, len(truth), EVALUATE_CHUNK):
        chunk = x[start : start + EVALUATE_CHUNK]
        predicted = await predict(model, version, chunk)
        if len(predicted) != len(chunk):
            raise Unavailable("inference service: PredictBatch answered another count")
        want = truth[start : start + EVALUATE_CHUNK]
        correct += sum(1 for p, t in zip(predicted, want, strict=True) if p == t)
    return correct


def _evaluated_sources(requested: Any) -> tuple[Source, ...]:
    if not requested:
        return _EVALUATED_SOURCES
    out: list[Source] = []
    for i, code in enumerate(requested):
        source = _SOURCES.get(code)
        if source is None:
            raise InvalidArgument(f"sources[{i}]: must be FEEDBACK, OVERRIDE, SENSOR or IMPORT")
        if source not in out:
            out.append(source)
    return tuple(out)


def _check_label(label: str, labels: tuple[str, ...], where: str) -> None:
    # The given label is not echoed: it is household information.
    if label not in labels:
        raise InvalidArgument(f"{where}: must be one of the model's labels ({', '.join(labels)})")


def _entry_pb(entry: LedgerEntry, accountant: str) -> pb.LedgerEntry:
    m = entry.mechanism
    out = pb.LedgerEntry(
        entry_id=entry.id,
        scope=entry.scope,
        mechanism=pb.MECHANISM_DP_SGD if m.kind == "dp_sgd" else pb.MECHANISM_FEDERATED_DELTA,
        noise_multiplier=m.noise_multiplier,
        sample_rate=m.sample_rate,
        steps=entry.steps_charged,
        # This mechanism alone, for the steps that count now (0 once released).
        epsilon=mechanism_epsilon(
            m.noise_multiplier, m.sample_rate, entry.steps_charged, entry.delta, accountant
        ),
        delta=entry.delta,
        privacy_unit=entry.privacy_unit,  # the unit it was charged in
    )
    out.recorded_at.FromDatetime(entry.reserved_at)
    return out


def job_pb(rec: JobRecord, unit: str) -> pb.Job:
    job = pb.Job(
        job_id=rec.job_id,
        model_name=rec.model,
        state=_STATES[rec.state],
        progress=rec.progress,
        epsilon_spent=rec.epsilon,
        message=rec.message,
        base_task_metric_before=rec.metric_before,
        base_task_metric_after=rec.metric_after,
        privacy_unit=unit,
    )
    if rec.candidate_version:
        job.candidate.CopyFrom(
            common_pb2.ModelRef(
                name=rec.candidate_name, version=rec.candidate_version, sha256=rec.candidate_sha256
            )
        )
    job.created_at.FromDatetime(rec.created_at)
    if rec.finished_at is not None:
        job.finished_at.FromDatetime(rec.finished_at)
    return job
