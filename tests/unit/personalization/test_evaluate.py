"""EvaluateVersions on a tiny example store with a fake inference: the accuracy math,
the since/sources filters, chunking, the newest-rows cap and the refusals."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import numpy.typing as npt
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from roost.personalization.v1 import personalization_service_pb2 as pb
from services.kit.auth import Role
from services.kit.errors import FailedPrecondition, InvalidArgument, Unavailable
from services.personalization import servicer as servicer_mod
from services.personalization.job_manager import JobManager
from services.personalization.job_table import JobTable
from services.personalization.learning_mode import LearningMode
from services.personalization.ledger import PrivacyLedger
from services.personalization.servicer import POLICY, PersonalizationServicer
from services.personalization.store import ExampleStore, NewExample, Source

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
# Distinctive values: they must never show up in a log line.
SECRET = 1234.5678


def row(occupied: bool, i: int) -> npt.NDArray[np.float32]:
    """An occupancy input whose first feature tells the fake models the truth."""
    return np.asarray([1.0 if occupied else 0.0, SECRET, float(i), 0, 0, 1], dtype=np.float32)


@dataclass
class FakeInference:
    """Version "good" reads the truth from feature 0; "vacant" always answers vacant;
    "half" is right on even rows (feature 2 is the row number) and wrong on odd ones."""

    calls: list[tuple[str, str, int]] = field(default_factory=list)
    fail: Exception | None = None

    async def __call__(self, model: str, version: str, x: npt.NDArray[np.float32]) -> list[str]:
        self.calls.append((model, version, len(x)))
        if self.fail is not None:
            raise self.fail
        truth = ["occupied" if r[0] > 0.5 else "vacant" for r in x]
        if version == "good":
            return truth
        if version == "vacant":
            return ["vacant"] * len(x)
        if version == "half":
            flip = {"occupied": "vacant", "vacant": "occupied"}
            return [t if int(r[2]) % 2 == 0 else flip[t] for t, r in zip(truth, x, strict=True)]
        raise FailedPrecondition(f"versions: inference does not serve {model} {version}")


@dataclass
class Fixture:
    servicer: PersonalizationServicer
    store: ExampleStore
    inference: FakeInference


@pytest.fixture
def fx(
    manager: JobManager,
    store: ExampleStore,
    ledger: PrivacyLedger,
    job_table: JobTable,
    learning_mode: LearningMode,
) -> Fixture:
    async def decisions(decision_id: str) -> object:
        raise AssertionError("no decisions here")

    inference = FakeInference()
    servicer = PersonalizationServicer(
        manager=manager,
        store=store,
        ledger=ledger,
        job_table=job_table,
        decisions=decisions,  # type: ignore[arg-type]
        max_examples_per_request=100,
        learning_mode=learning_mode,
        predict=inference,
    )
    return Fixture(servicer, store, inference)


def add(store: ExampleStore, labels: list[bool], source: Source, minutes: int = 0) -> None:
    store.add(
        "occupancy",
        [
            NewExample(
                row(o, i),
                "occupied" if o else "vacant",
                source,
                T0 + timedelta(minutes=minutes + i),
            )
            for i, o in enumerate(labels)
        ],
    )


async def evaluate(
    fx: Fixture,
    versions: list[str],
    *,
    since: datetime | None = None,
    sources: list[pb.LabelSource.ValueType] | None = None,
) -> dict[str, tuple[float, int]]:
    request = pb.EvaluateVersionsRequest(model_name="occupancy", versions=versions)
    if since is not None:
        request.since.FromDatetime(since)
    request.sources.extend(sources or [])
    response = await fx.servicer.EvaluateVersions(request, None)
    assert [r.version for r in response.results] == versions  # request order
    return {r.version: (r.accuracy, r.count) for r in response.results}


async def test_accuracy_is_the_share_of_predictions_equal_to_the_stored_label(
    fx: Fixture, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # 30 labels: 10 occupied, 20 vacant.
    add(fx.store, [i % 3 == 0 for i in range(30)], "sensor")
    scores = await evaluate(fx, ["good", "vacant", "half"])
    assert scores["good"] == (1.0, 30)
    assert scores["vacant"] == (20 / 30, 30)
    assert scores["half"] == (0.5, 30)
    # Only counts and accuracies came out; nothing logged a value or a label.
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "1234.5" not in text
    assert "occupied" not in text


async def test_since_and_sources_select_the_labels(fx: Fixture) -> None:
    add(fx.store, [True] * 5, "feedback", minutes=0)  # T0 .. T0+4 min
    add(fx.store, [True] * 4, "override", minutes=100)  # T0+100 .. +103
    add(fx.store, [False] * 3, "sensor", minutes=200)
    add(fx.store, [True] * 6, "import", minutes=300)  # not scored by default
    # Default sources: feedback + override + sensor.
    assert await evaluate(fx, ["vacant"]) == {"vacant": (3 / 12, 12)}
    # Only labels observed at or after `since`.
    since = T0 + timedelta(minutes=100)
    assert await evaluate(fx, ["vacant"], since=since) == {"vacant": (3 / 7, 7)}
    assert await evaluate(fx, ["vacant"], since=T0 + timedelta(days=1)) == {"vacant": (0.0, 0)}
    # Explicit sources (duplicates are harmless).
    only = [pb.LABEL_SOURCE_IMPORT, pb.LABEL_SOURCE_SENSOR, pb.LABEL_SOURCE_SENSOR]
    assert await evaluate(fx, ["vacant"], sources=only) == {"vacant": (3 / 9, 9)}
    assert await evaluate(fx, ["good"], sources=[pb.LABEL_SOURCE_FEEDBACK]) == {"good": (1.0, 5)}


async def test_inputs_go_to_inference_in_chunks_and_only_the_newest_are_scored(
    fx: Fixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(servicer_mod, "EVALUATE_CHUNK", 4)
    monkeypatch.setattr(servicer_mod, "MAX_EVALUATED_EXAMPLES", 10)
    # 6 old vacant labels, then 10 newer occupied ones: the cap keeps the 10 newest.
    add(fx.store, [False] * 6, "sensor", minutes=0)
    add(fx.store, [True] * 10, "sensor", minutes=100)
    scores = await evaluate(fx, ["vacant", "good"])
    assert scores == {"vacant": (0.0, 10), "good": (1.0, 10)}
    assert fx.inference.calls == [
        ("occupancy", v, n) for v in ("vacant", "good") for n in (4, 4, 2)
    ]


async def test_no_labels_scores_count_zero_without_calling_inference(fx: Fixture) -> None:
    assert await evaluate(fx, ["good", "vacant"]) == {"good": (0.0, 0), "vacant": (0.0, 0)}
    # A model this service never keeps labels of.
    response = await fx.servicer.EvaluateVersions(
        pb.EvaluateVersionsRequest(model_name="comfort", versions=["1.0.0"]), None
    )
    assert [(r.version, r.count) for r in response.results] == [("1.0.0", 0)]
    assert fx.inference.calls == []


@pytest.mark.parametrize(
    ("request_", "match"),
    [
        (pb.EvaluateVersionsRequest(versions=["good"]), "model_name"),
        (pb.EvaluateVersionsRequest(model_name="occupancy"), "versions: at least one"),
        (pb.EvaluateVersionsRequest(model_name="occupancy", versions=["a", "a"]), "more than"),
        (pb.EvaluateVersionsRequest(model_name="occupancy", versions=[""]), "empty"),
        (
            pb.EvaluateVersionsRequest(model_name="occupancy", versions=list("abcde")),
            "at most 4",
        ),
        (
            pb.EvaluateVersionsRequest(
                model_name="occupancy", versions=["good"], sources=[pb.LABEL_SOURCE_UNSPECIFIED]
            ),
            "sources",
        ),
        (
            pb.EvaluateVersionsRequest(
                model_name="occupancy",
                versions=["good"],
                since=Timestamp(seconds=253_402_300_800),  # year 10000
            ),
            r"^since: not a valid timestamp",
        ),
    ],
)
async def test_bad_requests_are_refused(
    fx: Fixture, request_: pb.EvaluateVersionsRequest, match: str
) -> None:
    with pytest.raises(InvalidArgument, match=match):
        await fx.servicer.EvaluateVersions(request_, None)


async def test_inference_refusals_and_outages_pass_through(fx: Fixture) -> None:
    add(fx.store, [True] * 3, "feedback")
    with pytest.raises(FailedPrecondition, match="does not serve"):
        await evaluate(fx, ["9.9.9"])
    fx.inference.fail = Unavailable("inference service: PredictBatch failed (UNAVAILABLE)")
    with pytest.raises(Unavailable):
        await evaluate(fx, ["good"])


async def test_without_inference_it_is_a_failed_precondition(fx: Fixture) -> None:
    fx.servicer._predict = None
    with pytest.raises(FailedPrecondition, match="inference"):
        await evaluate(fx, ["good"])


def test_only_update_admin_and_auditor_may_evaluate() -> None:
    allowed = POLICY["/roost.personalization.v1.PersonalizationService/EvaluateVersions"]
    assert allowed == frozenset({Role.UPDATE, Role.ADMIN, Role.AUDITOR})
