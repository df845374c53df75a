"""The job manager: a full in-process flow (examples in, real DP training in a child,
a signed candidate staged, the budget charged) whose INFO logs must not contain a single
household value, and the recovery of jobs a restart interrupted."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import tarfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from models.manifest import shipped_models_dir
from roost.audit.v1 import audit_service_pb2 as audit_pb
from roost.personalization.v1 import personalization_service_pb2 as pb
from services.kit.errors import FailedPrecondition, NotFound
from services.kit.tensors import array_to_tensor
from services.modelstore import local_key
from services.modelstore.registry import Registry
from services.personalization.config import PersonalizationConfig
from services.personalization.job_manager import JobManager
from services.personalization.job_table import JobRecord, JobTable
from services.personalization.learning_mode import FILE_NAME, LearningMode
from services.personalization.ledger import PrivacyLedger
from services.personalization.ledger_records import BudgetPolicy, Mechanism
from services.personalization.servicer import PersonalizationServicer
from services.personalization.store import ExampleStore, NewExample
from tests.support.occupancy_rows import synthetic_occupancy

#: The job's own bound (max_duration_seconds 60) plus room for the child's imports.
JOB_TIMEOUT_SECONDS = 100.0


async def test_a_full_flow_logs_no_household_value(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """AddExamples, RecordLabel, StartTraining (real DP training in a child), staging,
    GetPrivacyBudget: the INFO logs of all of it contain no input value and no label."""
    caplog.set_level(logging.INFO)
    registry = Registry(tmp_path / "models")
    registry.bootstrap(shipped_models_dir())
    key = Ed25519PrivateKey.generate()
    key_path = tmp_path / "local-candidate-key.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    config = PersonalizationConfig(
        data_dir=tmp_path / "data", min_examples=100, epochs=1.0, nice=0, max_duration_seconds=60
    )
    store = ExampleStore.open(config.data_dir / "examples.db")
    ledger = PrivacyLedger.open(
        config.data_dir / "ledger.db", BudgetPolicy(epsilon=4.0, delta=1e-5, accountant="prv")
    )
    table = JobTable(config.data_dir / "jobs.db")
    staged: list[tuple[str, bytes, bytes]] = []

    async def stage(model: str, bundle: bytes, signature: bytes) -> tuple[str, str, str]:
        staged.append((model, bundle, signature))
        with tarfile.open(fileobj=io.BytesIO(bundle)) as tar:
            member = tar.extractfile("manifest.json")
            assert member is not None
            manifest = json.loads(member.read())
        return model, manifest["version"], manifest["sha256"]

    manager = JobManager(
        config,
        store=store,
        ledger=ledger,
        jobs=table,
        registry=registry,
        stage=stage,
        signing_key_path=key_path,
    )
    assert await manager.recover() == []
    x, labels = synthetic_occupancy(150, seed=3)
    decision_row = x[0] + np.float32(0.011)

    async def decisions(decision_id: str) -> audit_pb.LogEntry:
        if decision_id != "d1":
            raise NotFound("decision_id: not in the audit log")
        entry = audit_pb.LogEntry()
        entry.decision.model.name = "occupancy"
        entry.decision.inputs.tensor.CopyFrom(array_to_tensor(decision_row))
        entry.decision.decided_at.FromDatetime(datetime.now(UTC))
        return entry

    servicer = PersonalizationServicer(
        manager=manager,
        store=store,
        ledger=ledger,
        job_table=table,
        decisions=decisions,
        max_examples_per_request=1000,
        learning_mode=LearningMode(config.data_dir / FILE_NAME),
    )
    request = pb.AddExamplesRequest(
        model_name="occupancy",
        source=pb.LABEL_SOURCE_SENSOR,
        examples=[
            pb.Example(input=array_to_tensor(row), label=label)
            for row, label in zip(x, labels, strict=True)
        ],
    )
    assert (await servicer.AddExamples(request, None)).added == 150
    recorded = await servicer.RecordLabel(
        pb.RecordLabelRequest(decision_id="d1", label="occupied"), None
    )
    assert len(recorded.example_id) == 64
    with pytest.raises(FailedPrecondition, match="occupancy and routine"):
        await servicer.StartTraining(
            pb.StartTrainingRequest(model_name="comfort", target_epsilon=1), None
        )

    started = await servicer.StartTraining(
        pb.StartTrainingRequest(
            model_name="occupancy", target_epsilon=1.0, max_duration_seconds=60
        ),
        None,
    )
    await asyncio.wait_for(manager.wait(), timeout=JOB_TIMEOUT_SECONDS)
    job = (await servicer.GetJob(pb.GetJobRequest(job_id=started.job.job_id), None)).job
    assert job.state == pb.JOB_STATE_SUCCEEDED, job.message
    assert job.candidate.version == "1.0.0.1"
    assert len(staged) == 1
    model, bundle, signature = staged[0]
    local_key.verify(key.public_key(), model, "1.0.0.1", bundle, signature)
    report = (await servicer.GetPrivacyBudget(pb.GetPrivacyBudgetRequest(), None)).budget
    assert 0 < report.epsilon_spent <= 1.0 + 1e-6
    await manager.close()
    table.close()
    ledger.close()
    store.close()

    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "example store" in text
    assert "job" in text
    values = {repr(float(v)) for v in [*x[:, :4].ravel(), *decision_row[:4]]}
    values |= {f"{float(v):.3f}" for v in [*x[:, :4].ravel(), *decision_row[:4]]}
    leaked = sorted(v for v in values if v in text)
    assert leaked == [], leaked[:5]


async def test_a_restart_fails_interrupted_jobs_and_never_refunds_them(tmp_path: Path) -> None:
    config = PersonalizationConfig(data_dir=tmp_path / "data")
    store = ExampleStore.open(config.data_dir / "examples.db")
    ledger = PrivacyLedger.open(
        config.data_dir / "ledger.db", BudgetPolicy(epsilon=4.0, delta=1e-5, accountant="rdp")
    )
    table = JobTable(config.data_dir / "jobs.db")
    mech = Mechanism.dp_sgd(noise_multiplier=2.0, sample_rate=0.1, steps=40)
    killed = ledger.reserve(
        "household", mech, job_id="killed", privacy_unit="day"
    )  # no steps recorded
    settled = ledger.reserve(
        "household", mech, job_id="settled", privacy_unit="day"
    )  # final count recorded
    for job_id, res, done in (("killed", killed, None), ("settled", settled, 10)):
        table.put(
            JobRecord(
                job_id=job_id,
                model="occupancy",
                state="running",
                progress=0.5,
                epsilon=0.0,
                message="",
                created_at=datetime.now(UTC),
                finished_at=None,
                metric_before=0.0,
                metric_after=0.0,
                reservation_id=res.id,
                steps_planned=40,
                steps_done=done,
                started=True,
            )
        )

    async def stage(model: str, bundle: bytes, signature: bytes) -> tuple[str, str, str]:
        raise AssertionError("nothing is staged at recovery")

    manager = JobManager(
        config,
        store=store,
        ledger=ledger,
        jobs=table,
        registry=Registry(tmp_path / "models"),
        stage=stage,
        signing_key_path=tmp_path / "none.pem",
    )
    assert sorted(await manager.recover()) == ["killed", "settled"]
    for job_id in ("killed", "settled"):
        rec = table.get(job_id)
        assert rec.state == "failed"
        assert rec.message.startswith("interrupted by a restart")
        assert rec.finished_at is not None
    history = {e.job_id: e for e in ledger.history("household")}
    assert history["killed"].status == "reserved"  # charged at the full 40 steps
    assert history["killed"].steps_charged == 40
    assert history["settled"].status == "committed"
    assert history["settled"].steps_charged == 10
    assert await manager.recover() == []  # nothing left to recover
    table.close()
    ledger.close()
    store.close()


def examples_now(store: ExampleStore, n: int) -> None:
    x, labels = synthetic_occupancy(n, seed=5)
    now = datetime.now(UTC)
    store.add(
        "occupancy",
        [NewExample(row, label, "sensor", now) for row, label in zip(x, labels, strict=True)],
        now=now,
    )


@pytest.mark.parametrize("days", [31, 400])
async def test_a_clock_set_back_refuses_the_run_before_anything_happens(
    config: PersonalizationConfig,
    registry: Registry,
    store: ExampleStore,
    ledger: PrivacyLedger,
    job_table: JobTable,
    tmp_path: Path,
    days: int,
) -> None:
    examples_now(store, config.min_examples)
    manager = JobManager(
        config,
        store=store,
        ledger=ledger,
        jobs=job_table,
        registry=registry,
        stage=no_staging,
        signing_key_path=tmp_path / "absent.pem",
        clock=lambda: datetime.now(UTC) - timedelta(days=days),
    )
    ledger.check_time()  # the ledger has seen the real time
    with pytest.raises(FailedPrecondition, match="clock went backwards"):
        await manager.start("occupancy", 1.0, 0)
    assert job_table.unfinished() == []
    assert ledger.history("household") == []
    assert store.count("occupancy") == config.min_examples


async def test_a_clock_jumped_forward_prunes_the_data_before_any_budget_is_given(
    config: PersonalizationConfig,
    registry: Registry,
    store: ExampleStore,
    ledger: PrivacyLedger,
    job_table: JobTable,
    tmp_path: Path,
) -> None:
    examples_now(store, config.min_examples)
    manager = JobManager(
        config,
        store=store,
        ledger=ledger,
        jobs=job_table,
        registry=registry,
        stage=no_staging,
        signing_key_path=tmp_path / "absent.pem",
        clock=lambda: datetime.now(UTC) + timedelta(days=31),
    )
    with pytest.raises(FailedPrecondition, match="0 are stored"):
        await manager.start("occupancy", 1.0, 0)
    assert store.count("occupancy") == 0
    assert ledger.history("household") == []


async def no_staging(model: str, bundle: bytes, signature: bytes) -> tuple[str, str, str]:
    raise AssertionError("nothing is staged here")
