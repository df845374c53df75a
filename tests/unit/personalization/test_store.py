"""The local example store (dedup, pinning, retention) and a full in-process flow whose
INFO logs must not contain a single household value."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import math
import stat
import tarfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from models.manifest import shipped_models_dir
from roost.audit.v1 import audit_service_pb2 as audit_pb
from roost.common.v1 import common_pb2
from roost.personalization.v1 import personalization_service_pb2 as pb
from services.kit.errors import FailedPrecondition, InvalidArgument, NotFound
from services.modelstore import local_key
from services.modelstore.registry import Registry
from services.personalization.config import PersonalizationConfig
from services.personalization.jobs import JobManager, JobRecord, JobTable
from services.personalization.ledger import BudgetPolicy, Mechanism, PrivacyLedger
from services.personalization.servicer import PersonalizationServicer
from services.personalization.store import ExampleStore, NewExample

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
LABELS = ("vacant", "occupied")


def ex(values: list[float], label: str, minutes: int = 0, source: str = "sensor") -> NewExample:
    return NewExample(
        np.asarray(values, dtype=np.float32), label, source, T0 + timedelta(minutes=minutes)
    )  # type: ignore[arg-type]


def test_add_dedups_and_loads_in_the_models_label_order(tmp_path: Path) -> None:
    with ExampleStore.open(tmp_path / "examples.db") as store:
        first = store.add("occupancy", [ex([1, 2], "occupied"), ex([3, 4], "vacant", 1)])
        assert [added for _, added in first] == [True, True]
        assert all(len(i) == 64 for i, _ in first)
        # Same model, input, label and time: a duplicate, in a later call or the same one.
        again = store.add("occupancy", [ex([1, 2], "occupied"), ex([5, 6], "vacant", 2)] * 2)
        assert [added for _, added in again] == [False, True, False, False]
        assert again[0][0] == first[0][0]
        # Another label or time is another example.
        assert store.add("occupancy", [ex([1, 2], "vacant")])[0][1]
        assert store.add("occupancy", [ex([1, 2], "occupied", 5)])[0][1]
        store.add("routine", [ex([9, 9, 9], "asleep")])
        assert store.count("occupancy") == 5
        assert store.counts() == {"occupancy": 5, "routine": 1}

        x, y = store.load("occupancy", LABELS, (2,))
        assert x.dtype == np.float32
        assert x.shape == (5, 2)
        assert x[0].tolist() == [1.0, 2.0]
        assert y.tolist() == [1, 0, 0, 0, 1]
        # Reversed label order, unknown labels and other shapes are handled.
        _, y_rev = store.load("occupancy", ("occupied", "vacant"), (2,))
        assert y_rev.tolist() == [0, 1, 1, 1, 0]
        assert store.load("occupancy", ("occupied",), (2,))[0].shape == (2, 2)
        assert store.load("occupancy", LABELS, (3,))[0].shape == (0, 3)
    assert stat.S_IMODE((tmp_path / "examples.db").stat().st_mode) == 0o600


def test_ids_are_keyed_per_store_and_survive_a_reopen(tmp_path: Path) -> None:
    one = ex([1.5, 2.5], "occupied")
    with ExampleStore.open(tmp_path / "a.db") as a:
        id_a = a.add("occupancy", [one])[0][0]
    with ExampleStore.open(tmp_path / "a.db") as a:
        assert a.add("occupancy", [one]) == [(id_a, False)]
    with ExampleStore.open(tmp_path / "b.db") as b:
        # Another hub's store: another key, so ids do not let anyone confirm values.
        assert b.example_id("occupancy", one) != id_a


def test_a_snapshot_pins_the_rows_a_job_reads(tmp_path: Path) -> None:
    with ExampleStore.open(tmp_path / "examples.db") as store:
        store.add("occupancy", [ex([i, i], "vacant", i) for i in range(3)])
        snap = store.snapshot("occupancy")
        assert snap.count == 3
        store.add("occupancy", [ex([7, 7], "occupied", 10)])
        x, _ = store.load("occupancy", LABELS, (2,), max_seq=snap.max_seq)
        assert len(x) == 3
        assert store.snapshot("routine").count == 0


def test_retention_deletes_old_examples(tmp_path: Path) -> None:
    with ExampleStore.open(tmp_path / "examples.db") as store:
        store.add("occupancy", [ex([1, 1], "vacant", -60 * 24 * 100), ex([2, 2], "vacant")])
        assert store.prune(T0 - timedelta(days=90)) == 1
        assert store.count("occupancy") == 1
        assert store.prune(T0 - timedelta(days=90)) == 0


def test_bad_examples_are_refused_without_their_values(tmp_path: Path) -> None:
    with ExampleStore.open(tmp_path / "examples.db") as store:
        with pytest.raises(InvalidArgument, match="finite") as e:
            store.add("occupancy", [ex([1.25, math.nan], "vacant")])
        assert "1.25" not in str(e.value)
        with pytest.raises(InvalidArgument, match="source"):
            store.add("occupancy", [ex([1, 2], "vacant", source="rumour")])
        with pytest.raises(InvalidArgument, match="timezone"):
            store.add(
                "occupancy",
                [NewExample(np.ones(2, np.float32), "vacant", "sensor", datetime(2026, 1, 1))],
            )
        assert store.count("occupancy") == 0


# --------------------------------------------------------------------------- full flow


def occupancy_rows(n: int, seed: int = 3) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    occupied = rng.random(n) < 0.4
    hour = rng.uniform(0, 24, n)
    x = np.stack(
        [
            rng.normal(21.37, 0.8, n),
            rng.normal(27.13, 2.0, n),
            np.where(occupied, rng.normal(481.7, 40.0, n), rng.uniform(0.3, 15.0, n)),
            np.where(occupied, rng.normal(923.9, 90.0, n), rng.normal(455.1, 20.0, n)),
            np.sin(2 * math.pi * hour / 24),
            np.cos(2 * math.pi * hour / 24),
        ],
        axis=1,
    ).astype(np.float32)
    return x, ["occupied" if o else "vacant" for o in occupied]


def tensor(row: np.ndarray) -> common_pb2.Tensor:
    return common_pb2.Tensor(
        dtype=common_pb2.DATA_TYPE_FLOAT32, shape=[len(row)], float_values=[float(v) for v in row]
    )


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
    x, labels = occupancy_rows(150)
    decision_row = x[0] + np.float32(0.011)

    async def decisions(decision_id: str) -> audit_pb.LogEntry:
        if decision_id != "d1":
            raise NotFound("decision_id: not in the audit log")
        entry = audit_pb.LogEntry()
        entry.decision.model.name = "occupancy"
        entry.decision.inputs.tensor.CopyFrom(tensor(decision_row))
        entry.decision.decided_at.FromDatetime(datetime.now(UTC))
        return entry

    servicer = PersonalizationServicer(
        manager=manager,
        store=store,
        ledger=ledger,
        job_table=table,
        decisions=decisions,
        max_examples_per_request=1000,
    )
    request = pb.AddExamplesRequest(
        model_name="occupancy",
        source=pb.LABEL_SOURCE_SENSOR,
        examples=[
            pb.Example(input=tensor(row), label=label) for row, label in zip(x, labels, strict=True)
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
    for _ in range(240):
        job = (await servicer.GetJob(pb.GetJobRequest(job_id=started.job.job_id), None)).job
        if job.state in (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED):
            break
        await asyncio.sleep(0.25)
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
    killed = ledger.reserve("household", mech, job_id="killed")  # no steps recorded
    settled = ledger.reserve("household", mech, job_id="settled")  # final count recorded
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
