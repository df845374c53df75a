"""The servicer's lists: ListJobs and ListLedgerEntries page newest first with the kit's
opaque page tokens (passed back unchanged; an edited token, or one from another scope,
is INVALID_ARGUMENT) and the kit's page-size bounds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from roost.personalization.v1 import personalization_service_pb2 as pb
from services.kit.errors import InvalidArgument
from services.kit.tensors import array_to_tensor
from services.personalization.job_manager import JobManager
from services.personalization.job_table import JobRecord, JobTable
from services.personalization.learning_mode import LearningMode
from services.personalization.ledger import PrivacyLedger
from services.personalization.ledger_records import Mechanism
from services.personalization.servicer import PersonalizationServicer
from services.personalization.store import ExampleStore
from tests.support.occupancy_rows import synthetic_occupancy

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
RUN = Mechanism.dp_sgd(noise_multiplier=2.0, sample_rate=0.01, steps=10)


@pytest.fixture
def servicer(
    manager: JobManager,
    store: ExampleStore,
    ledger: PrivacyLedger,
    job_table: JobTable,
    learning_mode: LearningMode,
) -> PersonalizationServicer:
    async def decisions(decision_id: str) -> object:
        raise AssertionError("no decisions here")

    return PersonalizationServicer(
        manager=manager,
        store=store,
        ledger=ledger,
        job_table=job_table,
        decisions=decisions,  # type: ignore[arg-type]
        max_examples_per_request=100,
        learning_mode=learning_mode,
    )


def job(i: int) -> JobRecord:
    return JobRecord(
        job_id=f"job-{i}",
        model="occupancy",
        state="succeeded",
        progress=1.0,
        epsilon=0.5,
        message="",
        created_at=T0 + timedelta(minutes=i),
        finished_at=T0 + timedelta(minutes=i, seconds=30),
        metric_before=0.0,
        metric_after=0.0,
        reservation_id=f"r{i}",
        steps_planned=10,
        steps_done=10,
        started=True,
    )


async def test_jobs_page_newest_first_with_opaque_tokens(
    servicer: PersonalizationServicer, job_table: JobTable
) -> None:
    for i in range(5):
        job_table.put(job(i))
    seen: list[list[str]] = []
    token = ""
    while True:
        page = await servicer.ListJobs(pb.ListJobsRequest(page_size=2, page_token=token), None)
        seen.append([j.job_id for j in page.jobs])
        if not page.next_page_token:
            break
        assert not page.next_page_token.isdigit()  # opaque, not an offset to edit
        token = page.next_page_token
    assert seen == [["job-4", "job-3"], ["job-2", "job-1"], ["job-0"]]
    everything = await servicer.ListJobs(pb.ListJobsRequest(), None)  # 0: the maximum
    assert len(everything.jobs) == 5
    assert everything.next_page_token == ""


@pytest.mark.parametrize(
    ("request_", "match"),
    [
        (pb.ListJobsRequest(page_token="2"), "page_token"),
        (pb.ListJobsRequest(page_token="not a token!"), "page_token"),
        (pb.ListJobsRequest(page_size=101), "page_size"),
        (pb.ListJobsRequest(page_size=-1), "page_size"),
    ],
)
async def test_bad_job_pages_are_refused(
    servicer: PersonalizationServicer, request_: pb.ListJobsRequest, match: str
) -> None:
    with pytest.raises(InvalidArgument, match=match):
        await servicer.ListJobs(request_, None)


async def test_ledger_entries_page_newest_first_and_tokens_stay_in_their_scope(
    servicer: PersonalizationServicer, ledger: PrivacyLedger
) -> None:
    for i in range(3):
        ledger.reserve(
            "household", RUN, job_id=f"job-{i}", privacy_unit="day", now=T0 + timedelta(minutes=i)
        )
    first = await servicer.ListLedgerEntries(pb.ListLedgerEntriesRequest(page_size=2), None)
    assert len(first.entries) == 2
    assert first.entries[0].recorded_at.ToDatetime(UTC) == T0 + timedelta(minutes=2)
    assert first.entries[0].steps == RUN.steps
    assert first.entries[0].epsilon > 0
    # epsilon is shown with its unit: the default household-day.
    assert first.entries[0].privacy_unit == "day"
    budget = (await servicer.GetPrivacyBudget(pb.GetPrivacyBudgetRequest(), None)).budget
    assert budget.privacy_unit == "day"
    # The default scope is "household": its token is good for the named scope too.
    second = await servicer.ListLedgerEntries(
        pb.ListLedgerEntriesRequest(
            scope="household", page_size=2, page_token=first.next_page_token
        ),
        None,
    )
    assert [e.recorded_at.ToDatetime(UTC) for e in second.entries] == [T0]
    assert second.next_page_token == ""
    with pytest.raises(InvalidArgument, match="page_token"):
        await servicer.ListLedgerEntries(
            pb.ListLedgerEntriesRequest(
                scope="household/other", page_size=2, page_token=first.next_page_token
            ),
            None,
        )
    with pytest.raises(InvalidArgument, match="page_size"):
        await servicer.ListLedgerEntries(pb.ListLedgerEntriesRequest(page_size=101), None)


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [(253_402_300_800, 0), (-62_135_596_801, 0), (0, -1), (0, 1_000_000_000), (2**62, 0)],
)
async def test_an_invalid_observed_at_is_invalid_argument_naming_the_field(
    servicer: PersonalizationServicer, store: ExampleStore, seconds: int, nanos: int
) -> None:
    # protobuf's ToDatetime raises ValueError on these, which the kit would turn into
    # INTERNAL; the kit's timestamp check names the field (never the value).
    x, labels = synthetic_occupancy(2, seed=3)
    good, bad = (
        pb.Example(input=array_to_tensor(r), label=lab) for r, lab in zip(x, labels, strict=True)
    )
    good.observed_at.FromDatetime(T0)
    bad.observed_at.seconds = seconds
    bad.observed_at.nanos = nanos
    request = pb.AddExamplesRequest(
        model_name="occupancy", source=pb.LABEL_SOURCE_SENSOR, examples=[good, bad]
    )
    with pytest.raises(InvalidArgument) as refused:
        await servicer.AddExamples(request, None)
    assert str(refused.value) == (
        "examples[1].observed_at: not a valid timestamp (years 1 to 9999, nanos 0 to 999999999)"
    )
    assert store.count("occupancy") == 0  # the good example of the request is not kept either
    # The same request with a valid time is taken.
    request.examples[1].observed_at.FromDatetime(T0 + timedelta(minutes=1))  # a copy of bad
    assert (await servicer.AddExamples(request, None)).added == 2
