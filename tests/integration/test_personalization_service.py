"""Personalization end to end on real processes: audit, inference, update, personalization.

Labelled examples in (AddExamples, RecordLabel from the audit log), a DP fine-tuning job
that charges the household's privacy budget before it trains, a signed local candidate
staged with the update service (never active), refusals that leave the budget untouched,
no household value in metrics or logs, a budget that a restart cannot reset, and a
ledger that cannot be silently reset: deleted or edited, it is found against its privacy
records in the real audit log, training is refused, and `roost personalize ledger
rebuild` restores it exactly.
"""

from __future__ import annotations

import asyncio
import sqlite3
import stat
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import numpy as np
import pytest

from cli.main import main
from cli.stack import Stack
from models.datasets import DatasetMissing, load_occupancy
from models.occupancy.data import build_features
from roost.audit.v1 import audit_service_pb2 as audit_pb
from roost.audit.v1 import audit_service_pb2_grpc as audit_grpc
from roost.common.v1 import common_pb2
from roost.personalization.v1 import personalization_service_pb2 as pb
from roost.personalization.v1 import personalization_service_pb2_grpc as pb_grpc
from roost.update.v1 import update_service_pb2 as update_pb
from roost.update.v1 import update_service_pb2_grpc as update_grpc
from services.kit.auth import Role
from services.kit.tensors import array_to_tensor
from services.personalization.ledger_trail import PRIVACY_MODEL
from tests.support.occupancy_rows import synthetic_occupancy
from tests.support.shared_data import DATA_DIR
from tests.support.stacks import service_channel
from tests.support.waiting import poll_async

pytestmark = pytest.mark.integration

MIN_EXAMPLES = 200
N_EXAMPLES = 300


def occupancy_examples(n: int, seed: int = 7) -> tuple[np.ndarray, list[str]]:
    """Labelled occupancy rows (features in the manifest's order).

    Real UCI rows (models/occupancy/data.py) when ../shared/data has them; otherwise
    clearly separable synthetic rows: lights on and CO2 up when occupied.
    """
    try:
        test = load_occupancy("test", DATA_DIR)
        x = build_features(test)[:n]
        labels = ["occupied" if v else "vacant" for v in test.occupancy[:n]]
        return x.astype(np.float32), labels
    except DatasetMissing:
        return synthetic_occupancy(n, seed)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    st = Stack(tmp_path_factory.mktemp("personalization") / "home", hub_id="pers")
    try:
        st.start_service(Role.AUDIT)
        st.start_service(Role.INFERENCE)
        st.start_service(Role.UPDATE, {"ROOST_UPDATE_HEALTH_CHECK_SECONDS": "5"})
        start_personalization(st)
        yield st
    finally:
        st.stop()


def start_personalization(st: Stack) -> None:
    st.start_service(
        Role.PERSONALIZATION,
        {
            "ROOST_PERSONALIZATION_MIN_EXAMPLES": str(MIN_EXAMPLES),
            "ROOST_PERSONALIZATION_EPOCHS": "2",
            "ROOST_PERSONALIZATION_NICE": "5",
        },
        timeout=60,
    )


def personalization(stack: Stack, role: Role = Role.HUB) -> pb_grpc.PersonalizationServiceAsyncStub:
    return pb_grpc.PersonalizationServiceStub(service_channel(stack, Role.PERSONALIZATION, role))


async def budget(stub: pb_grpc.PersonalizationServiceAsyncStub) -> pb.PrivacyBudget:
    return (await stub.GetPrivacyBudget(pb.GetPrivacyBudgetRequest(), timeout=30)).budget


async def all_jobs(stub: pb_grpc.PersonalizationServiceAsyncStub) -> list[pb.Job]:
    return list((await stub.ListJobs(pb.ListJobsRequest(), timeout=10)).jobs)


def scrape(stack: Stack) -> str:
    port = stack.procs["personalization"].info["metrics_port"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


def value_strings(x: np.ndarray) -> set[str]:
    """How the stored values could appear in text (the distinctive, non-trivial ones)."""
    out: set[str] = set()
    for v in x[:, :4].ravel()[:200]:
        out |= {repr(float(v)), f"{float(v):.4f}", f"{float(v):.3f}"}
    return {s for s in out if len(s) >= 6}


async def expect(code: grpc.StatusCode, call: object) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call  # type: ignore[misc]
    assert e.value.code() == code, e.value.details()
    return e.value.details() or ""


async def test_training_charges_the_budget_and_stages_a_local_candidate(stack: Stack) -> None:
    hub = personalization(stack)
    admin = personalization(stack, Role.ADMIN)
    x, labels = occupancy_examples(N_EXAMPLES)

    # Not enough examples yet; unsupported model; bad requests.
    details = await expect(
        grpc.StatusCode.FAILED_PRECONDITION,
        admin.StartTraining(pb.StartTrainingRequest(model_name="occupancy", target_epsilon=1)),
    )
    assert f"at least {MIN_EXAMPLES}" in details
    details = await expect(
        grpc.StatusCode.FAILED_PRECONDITION,
        admin.StartTraining(pb.StartTrainingRequest(model_name="comfort", target_epsilon=1)),
    )
    assert "personalization supports occupancy and routine" in details
    await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        admin.StartTraining(pb.StartTrainingRequest(model_name="occupancy", target_epsilon=0)),
    )
    await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        hub.AddExamples(
            pb.AddExamplesRequest(
                model_name="occupancy",
                source=pb.LABEL_SOURCE_SENSOR,
                examples=[pb.Example(input=array_to_tensor(x[0]), label="maybe")],
            )
        ),
    )
    await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        hub.AddExamples(
            pb.AddExamplesRequest(
                model_name="occupancy",
                source=pb.LABEL_SOURCE_SENSOR,
                examples=[pb.Example(input=array_to_tensor(x[0][:5]), label="vacant")],
            )
        ),
    )
    # Only the hub adds examples.
    await expect(
        grpc.StatusCode.PERMISSION_DENIED,
        admin.AddExamples(pb.AddExamplesRequest(model_name="occupancy")),
    )

    start = int(time.time()) - 3600 * 6
    examples = []
    for i, (row, label) in enumerate(zip(x, labels, strict=True)):
        ex = pb.Example(input=array_to_tensor(row), label=label)
        ex.observed_at.FromSeconds(start + 60 * i)
        examples.append(ex)
    req = pb.AddExamplesRequest(
        model_name="occupancy", source=pb.LABEL_SOURCE_SENSOR, examples=examples
    )
    added = await hub.AddExamples(req, timeout=30)
    assert (added.added, added.total) == (N_EXAMPLES, N_EXAMPLES)
    again = await hub.AddExamples(req, timeout=30)  # duplicates are skipped
    assert (again.added, again.total) == (0, N_EXAMPLES)

    before = await budget(admin)
    assert before.scope == "household"
    assert before.epsilon_spent == 0.0
    assert before.epsilon_limit == 4.0
    # The default unit is the household-day, at the delta of 91 days (1/(10·91) >= 1e-3).
    assert (before.privacy_unit, before.delta) == ("day", 1e-3)

    started = await admin.StartTraining(
        pb.StartTrainingRequest(
            model_name="occupancy", target_epsilon=1.0, max_duration_seconds=20
        ),
        timeout=60,
    )
    job_id = started.job.job_id
    assert started.job.state in (pb.JOB_STATE_QUEUED, pb.JOB_STATE_RUNNING)
    # The mechanism is charged before training: the budget already shows it.
    reserved = await budget(admin)
    assert 0 < reserved.epsilon_spent <= 1.0 + 1e-6

    # One job at a time.
    await expect(
        grpc.StatusCode.FAILED_PRECONDITION,
        admin.StartTraining(pb.StartTrainingRequest(model_name="occupancy", target_epsilon=0.5)),
    )

    async def get_job() -> pb.Job:
        return (await admin.GetJob(pb.GetJobRequest(job_id=job_id), timeout=10)).job

    job = await poll_async(
        get_job,
        lambda j: j.state in (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED),
        75,
        "the training job to end",
        interval=0.5,
    )
    assert job.state == pb.JOB_STATE_SUCCEEDED, job.message
    assert 0 < job.epsilon_spent <= 1.0 + 1e-6
    assert job.privacy_unit == "day"
    assert job.progress == pytest.approx(1.0)
    assert job.candidate.name == "occupancy"
    assert job.candidate.version == "1.0.0.1"
    assert job.HasField("finished_at")
    print(f"job: {job.message}; epsilon {job.epsilon_spent:.4f}")

    spent = await budget(admin)
    assert 0 < spent.epsilon_spent <= spent.epsilon_limit
    assert spent.epsilon_spent <= reserved.epsilon_spent + 1e-9  # never more than reserved

    entries = (await admin.ListLedgerEntries(pb.ListLedgerEntriesRequest(), timeout=30)).entries
    assert len(entries) == 1
    assert entries[0].mechanism == pb.MECHANISM_DP_SGD
    assert entries[0].steps > 0
    # Day-level: the examples span at most 2 UTC days, so with as many replay
    # pseudo-days the sample rate is over at most 4 units (8 expected per step: all).
    assert entries[0].sample_rate == 1.0
    assert entries[0].privacy_unit == "day"
    assert entries[0].noise_multiplier > 0

    update = update_grpc.UpdateServiceStub(service_channel(stack, Role.UPDATE, Role.ADMIN))
    versions = (
        await update.ListVersions(update_pb.ListVersionsRequest(model_name="occupancy"), timeout=10)
    ).versions
    by_version = {v.model.version: v for v in versions}
    local = by_version["1.0.0.1"]
    assert local.source == update_pb.SOURCE_LOCAL
    assert local.slot == update_pb.SLOT_CANDIDATE  # a candidate, not active
    assert local.model.sha256 == job.candidate.sha256
    assert by_version["1.0.0"].slot == update_pb.SLOT_ACTIVE
    status = await update.GetRolloutStatus(
        update_pb.GetRolloutStatusRequest(model_name="occupancy"), timeout=10
    )
    assert status.status.active.version == "1.0.0"
    assert status.status.stage == update_pb.ROLLOUT_STAGE_STAGED

    # An auditor reads the jobs and the budget; it cannot train.
    auditor = personalization(stack, Role.AUDITOR)
    assert [j.job_id for j in await all_jobs(auditor)] == [job_id]
    await expect(
        grpc.StatusCode.PERMISSION_DENIED,
        auditor.StartTraining(pb.StartTrainingRequest(model_name="occupancy", target_epsilon=1)),
    )


async def test_an_over_budget_run_is_refused_and_changes_nothing(stack: Stack) -> None:
    admin = personalization(stack, Role.ADMIN)
    before = await budget(admin)
    jobs_before = await all_jobs(admin)
    # The whole period's budget fits on its own, not composed with what is spent.
    details = await expect(
        grpc.StatusCode.FAILED_PRECONDITION,
        admin.StartTraining(
            pb.StartTrainingRequest(
                model_name="occupancy",
                target_epsilon=before.epsilon_limit,
                max_duration_seconds=20,
            ),
            timeout=60,
        ),
    )
    assert "privacy budget exceeded" in details
    assert await all_jobs(admin) == jobs_before
    after = await budget(admin)
    assert after.epsilon_spent == pytest.approx(before.epsilon_spent, abs=1e-9)
    entries = (await admin.ListLedgerEntries(pb.ListLedgerEntriesRequest(), timeout=30)).entries
    assert len(entries) == 1


async def test_record_label_turns_a_logged_decision_into_an_example(stack: Stack) -> None:
    hub = personalization(stack)
    audit_hub = audit_grpc.AuditServiceStub(service_channel(stack, Role.AUDIT, Role.HUB))
    audit_admin = audit_grpc.AuditServiceStub(service_channel(stack, Role.AUDIT, Role.ADMIN))
    x, _ = occupancy_examples(2, seed=99)
    ids = [f"pers-{uuid.uuid4().hex}" for _ in range(2)]
    decisions = []
    for decision_id, row in zip(ids, x, strict=True):
        d = audit_pb.Decision(
            decision_id=decision_id,
            hub_id="pers",
            entity_id="binary_sensor.office_occupancy",
            model=common_pb2.ModelRef(name="occupancy", version="1.0.0", sha256="f" * 64),
            inputs=audit_pb.DecisionInputs(
                feature_names=["temperature", "humidity", "light", "co2", "hour_sin", "hour_cos"],
                tensor=array_to_tensor(row),
            ),
            output_label="vacant",
            confidence=0.9,
            action="publish",
            actor=audit_pb.ACTOR_AUTOMATIC,
        )
        d.decided_at.GetCurrentTime()
        decisions.append(d)
    await audit_hub.AppendDecisions(
        audit_pb.AppendDecisionsRequest(decisions=decisions), timeout=10
    )

    resp = await hub.RecordLabel(
        pb.RecordLabelRequest(
            decision_id=ids[0], label="occupied", source=pb.LABEL_SOURCE_FEEDBACK
        ),
        timeout=10,
    )
    assert len(resp.example_id) == 64
    assert f'roost_personalization_examples{{model="occupancy"}} {N_EXAMPLES + 1}.0' in scrape(
        stack
    )
    await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        hub.RecordLabel(pb.RecordLabelRequest(decision_id=ids[1], label="asleep")),
    )
    await expect(
        grpc.StatusCode.NOT_FOUND,
        hub.RecordLabel(pb.RecordLabelRequest(decision_id="no-such-decision", label="vacant")),
    )
    await audit_admin.RedactInputs(
        audit_pb.RedactInputsRequest(decision_id=ids[1], reason="erasure request"), timeout=10
    )
    details = await expect(
        grpc.StatusCode.FAILED_PRECONDITION,
        hub.RecordLabel(pb.RecordLabelRequest(decision_id=ids[1], label="vacant")),
    )
    assert "its inputs were erased" in details
    # A fleet round without its parameters is refused before anything is charged.
    await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        hub.ComputeFederatedUpdate(pb.ComputeFederatedUpdateRequest(model_name="occupancy")),
    )


async def test_no_household_value_in_metrics_or_logs(stack: Stack) -> None:
    x, _ = occupancy_examples(N_EXAMPLES)
    values = value_strings(x) | value_strings(occupancy_examples(2, seed=99)[0])
    metrics = scrape(stack)
    assert "roost_personalization_epsilon_spent" in metrics
    assert "roost_personalization_epsilon_budget" in metrics
    assert 'roost_personalization_jobs_total{state="succeeded"} 1.0' in metrics
    log = stack.procs["personalization"].log_path.read_text()
    # The service logs at INFO (so the check below is not vacuous).
    assert "personalization serving on" in log
    assert "example store:" in log
    for text, where in ((metrics, "metrics"), (log, "log")):
        leaked = sorted(v for v in values if v in text)
        assert leaked == [], f"household values in the {where}: {leaked[:5]}"


async def test_a_restart_cannot_reset_or_overspend_the_budget(stack: Stack) -> None:
    admin = personalization(stack, Role.ADMIN)
    before = await budget(admin)
    jobs_before = await all_jobs(admin)
    assert stack.stop_one("personalization") == 0
    start_personalization(stack)
    admin = personalization(stack, Role.ADMIN)
    after = await budget(admin)
    assert after.epsilon_spent == pytest.approx(before.epsilon_spent, abs=1e-9)
    assert after.epsilon_spent > 0
    assert await all_jobs(admin) == jobs_before
    await expect(
        grpc.StatusCode.FAILED_PRECONDITION,
        admin.StartTraining(
            pb.StartTrainingRequest(model_name="occupancy", target_epsilon=after.epsilon_limit),
            timeout=60,
        ),
    )
    assert (await budget(admin)).epsilon_spent == pytest.approx(after.epsilon_spent, abs=1e-9)


def ledger_path(stack: Stack) -> Path:
    return stack.home / "data" / "personalization" / "ledger.db"


async def ledger_entries(stub: pb_grpc.PersonalizationServiceAsyncStub) -> list[pb.LedgerEntry]:
    return list((await stub.ListLedgerEntries(pb.ListLedgerEntriesRequest(), timeout=30)).entries)


def restart_personalization(stack: Stack, edit: object) -> None:
    """Stops the service, lets ``edit`` (a function of the ledger's path) act on its
    ledger the way an attacker or bad luck would, and starts it again."""
    assert stack.stop_one("personalization") == 0
    edit(ledger_path(stack))  # type: ignore[operator]
    start_personalization(stack)


def delete_ledger(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


def refund_around_the_triggers(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TRIGGER charges_settle_only")
    conn.execute("UPDATE charges SET steps_charged = 0")
    conn.close()


def overwrite_file_header(path: Path) -> None:
    with path.open("r+b") as f:
        f.write(b"\0" * 100)


async def refused_training(stack: Stack) -> str:
    admin = personalization(stack, Role.ADMIN)
    details = await expect(
        grpc.StatusCode.FAILED_PRECONDITION,
        admin.StartTraining(
            pb.StartTrainingRequest(model_name="occupancy", target_epsilon=0.1), timeout=60
        ),
    )
    assert "does not match the audit log" in details
    assert "roost personalize ledger rebuild" in details
    return details


async def test_every_ledger_change_is_in_the_audit_log(stack: Stack) -> None:
    audit = audit_grpc.AuditServiceStub(service_channel(stack, Role.AUDIT, Role.AUDITOR))
    request = audit_pb.QueryDecisionsRequest(model_name=PRIVACY_MODEL)
    request.end_time.FromDatetime(datetime(9999, 1, 1, tzinfo=UTC))
    logged = (await audit.QueryDecisions(request, timeout=10)).entries
    actions = [e.decision.action for e in logged]
    assert actions.count("privacy.reserve") == 1
    assert actions.count("privacy.commit") == 1
    entries = await ledger_entries(personalization(stack, Role.ADMIN))
    assert {e.decision.entity_id for e in logged} == {"roost.privacy.household"}
    assert all(entries[0].entry_id in e.decision.output_label for e in logged)
    assert stat.S_IMODE(ledger_path(stack).stat().st_mode) == 0o600


async def test_a_deleted_ledger_is_refused_then_rebuilt_exactly(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    admin = personalization(stack, Role.ADMIN)
    entries, spent = await ledger_entries(admin), (await budget(admin)).epsilon_spent
    assert spent > 0
    restart_personalization(stack, delete_ledger)
    admin = personalization(stack, Role.ADMIN)
    assert (await budget(admin)).epsilon_spent == 0  # an empty file ...
    details = await refused_training(stack)  # ... that cannot be trained on
    assert "missing from the ledger" in details
    stack.write_stack_file()
    cli = ["--home", str(stack.home), "personalize", "ledger", "rebuild"]
    assert await asyncio.to_thread(main, cli) == 0
    assert "it matches the audit log" in capsys.readouterr().out
    assert await ledger_entries(admin) == entries
    assert (await budget(admin)).epsilon_spent == pytest.approx(spent, abs=1e-9)


async def test_an_sql_refund_around_the_triggers_is_refused_then_undone(stack: Stack) -> None:
    admin = personalization(stack, Role.ADMIN)
    entries, spent = await ledger_entries(admin), (await budget(admin)).epsilon_spent
    restart_personalization(stack, refund_around_the_triggers)
    admin = personalization(stack, Role.ADMIN)
    assert (await budget(admin)).epsilon_spent == 0
    assert "steps_charged differ from the audit log" in await refused_training(stack)
    await expect(
        grpc.StatusCode.PERMISSION_DENIED,
        personalization(stack, Role.HUB).RebuildLedger(pb.RebuildLedgerRequest(), timeout=60),
    )
    rebuilt = await admin.RebuildLedger(pb.RebuildLedgerRequest(), timeout=60)
    assert rebuilt.mechanisms == len(entries)
    assert await ledger_entries(admin) == entries
    assert (await budget(admin)).epsilon_spent == pytest.approx(spent, abs=1e-9)


async def test_an_overwritten_file_header_is_set_aside_refused_then_rebuilt(stack: Stack) -> None:
    admin = personalization(stack, Role.ADMIN)
    entries, spent = await ledger_entries(admin), (await budget(admin)).epsilon_spent
    restart_personalization(stack, overwrite_file_header)
    assert len(list(ledger_path(stack).parent.glob("ledger.db.unreadable-*"))) == 1
    admin = personalization(stack, Role.ADMIN)
    assert "missing from the ledger" in await refused_training(stack)
    await admin.RebuildLedger(pb.RebuildLedgerRequest(), timeout=60)
    assert await ledger_entries(admin) == entries
    assert (await budget(admin)).epsilon_spent == pytest.approx(spent, abs=1e-9)


def test_the_personalize_cli(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    stack.write_stack_file()
    home = ["--home", str(stack.home)]
    assert main([*home, "personalize", "budget"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("household: epsilon ")
    assert "of 4 spent per household-day in the last 30 days (delta 0.001)" in out
    assert "reveals at most epsilon 4 (delta 0.001) about any one day of your home's life" in out
    assert main([*home, "personalize", "--role", "auditor", "ledger"]) == 0
    assert "DP-SGD" in capsys.readouterr().out
    assert main([*home, "personalize", "jobs"]) == 0
    assert "occupancy" in capsys.readouterr().out
    # Over budget: a clear refusal, exit code 2, nothing else happens.
    assert main([*home, "personalize", "train", "occupancy", "--epsilon", "4"]) == 2
    assert "FAILED_PRECONDITION" in capsys.readouterr().err
