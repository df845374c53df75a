"""A ledger that cannot be silently reset: every change is in the audit trail, and a
deleted, truncated, edited or overwritten ledger is found and rebuilt exactly from it.

The audit log here is a list of the decisions the recorder appended, each one first
accepted by the audit service's own validation (``services.audit.records.prepare``);
tests/integration/test_personalization_service.py runs the same against the real
audit service.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from roost.audit.v1 import audit_service_pb2 as audit_pb
from services.audit.records import prepare
from services.kit import sqlite as kit_sqlite
from services.kit.clock import to_us
from services.kit.errors import FailedPrecondition, Unavailable
from services.personalization import ledger_schema
from services.personalization.ledger import LedgerUnreadable, PrivacyLedger
from services.personalization.ledger_guard import LedgerGuard
from services.personalization.ledger_records import BudgetPolicy, Mechanism
from services.personalization.ledger_trail import PRIVACY_MODEL, PrivacyRecord

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
RUN = Mechanism.dp_sgd(noise_multiplier=1.0, sample_rate=0.02, steps=100)
POLICY = BudgetPolicy(epsilon=4.0, delta=1e-5, accountant="rdp")


class AuditLog:
    """The decisions appended, in log order; ``down`` makes it unavailable."""

    def __init__(self) -> None:
        self.decisions: list[audit_pb.Decision] = []
        self.down = False

    def record(self, r: PrivacyRecord) -> None:
        if self.down:
            raise Unavailable("audit: unavailable")
        d = r.decision("test-hub")
        prepare([d])  # what the audit service validates
        if all(x.decision_id != d.decision_id for x in self.decisions):
            self.decisions.append(d)

    async def records(self) -> list[PrivacyRecord]:
        if self.down:
            raise Unavailable("audit: unavailable")
        return [PrivacyRecord.from_decision(d) for d in self.decisions]


@pytest.fixture
def audit() -> AuditLog:
    return AuditLog()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "ledger.db"


def open_ledger(path: Path, audit: AuditLog) -> PrivacyLedger:
    return PrivacyLedger.open(path, POLICY, recorder=audit.record)


@pytest.fixture
def history(path: Path, audit: AuditLog) -> None:
    """Three runs: committed with fewer steps, released, and still reserved."""
    with open_ledger(path, audit) as led:
        a = led.reserve("household", RUN, job_id="a", privacy_unit="day", now=NOW)
        led.commit(a.id, steps_done=60, now=NOW + timedelta(minutes=5))
        b = led.reserve(
            "household", RUN, job_id="b", privacy_unit="day", now=NOW + timedelta(hours=1)
        )
        led.release(b.id, now=NOW + timedelta(hours=1, minutes=1))
        led.reserve("household", RUN, job_id="c", privacy_unit="day", now=NOW + timedelta(hours=2))


def set_aside(path: Path) -> None:
    """What the service does with an unreadable ledger (services.personalization.__main__)."""
    path.replace(path.with_name("ledger.db.unreadable"))
    delete(path)


def delete(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


async def refused(led: PrivacyLedger, audit: AuditLog) -> str:
    with pytest.raises(FailedPrecondition) as e:
        await LedgerGuard(led, audit.records).check()
    message = str(e.value)
    assert "roost personalize ledger rebuild" in message
    return message


@pytest.mark.usefixtures("history")
def test_every_change_is_a_privacy_record_without_household_values(audit: AuditLog) -> None:
    actions = [d.action for d in audit.decisions]
    assert actions == [
        "privacy.reserve",
        "privacy.commit",
        "privacy.reserve",
        "privacy.release",
        "privacy.reserve",
    ]
    for d in audit.decisions:
        assert d.model.name == PRIVACY_MODEL
        assert d.entity_id == "roost.privacy.household"
        assert not d.HasField("inputs")
        fields = PrivacyRecord.from_decision(d).fields
        assert json.loads(d.output_label) == [fields[c] for c in ledger_schema.COLUMNS]
        assert fields["epsilon_after"] > 0
        assert fields["privacy_unit"] == "day"
        assert "per household-day" in d.policy.reason
    assert PrivacyRecord.from_decision(audit.decisions[1]).fields["steps_charged"] == 60


@pytest.mark.usefixtures("history")
async def test_an_intact_ledger_passes(path: Path, audit: AuditLog) -> None:
    with open_ledger(path, audit) as led:
        await LedgerGuard(led, audit.records).check()


@pytest.mark.usefixtures("history")
async def test_a_deleted_ledger_is_found_and_rebuilt_identically(
    path: Path, audit: AuditLog
) -> None:
    with open_ledger(path, audit) as led:
        rows, hwm, _ = led.rows()
        report = led.report("household", now=NOW + timedelta(hours=3))
    delete(path)
    with open_ledger(path, audit) as led:
        assert led.rows()[0] == []
        message = await refused(led, audit)
        assert "3 mechanism(s) recorded in the audit log are missing" in message
        # Training would reserve on an empty ledger: the check comes first.
        assert await LedgerGuard(led, audit.records).rebuild() == (5, 3)
        assert led.rows() == (rows, hwm, [])
        assert led.report("household", now=NOW + timedelta(hours=3)) == report
        await LedgerGuard(led, audit.records).check()
        # The rebuilt ledger goes on: the crashed job can still be settled, and audited.
        (c,) = [e for e in led.history("household") if e.job_id == "c"]
        led.commit(c.id, steps_done=10, now=NOW + timedelta(hours=4))
        await LedgerGuard(led, audit.records).check()
    assert len(list(path.parent.glob("ledger.db.replaced-*"))) == 1


@pytest.mark.usefixtures("history")
async def test_a_truncated_ledger_is_found(path: Path, audit: AuditLog) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TRIGGER charges_no_delete")
    conn.execute("DELETE FROM charges WHERE job_id = 'c'")
    conn.close()
    with open_ledger(path, audit) as led:
        assert "1 mechanism(s) recorded in the audit log are missing" in await refused(led, audit)


@pytest.mark.usefixtures("history")
async def test_the_sql_edit_around_the_triggers_is_found_and_undone(
    path: Path, audit: AuditLog
) -> None:
    with open_ledger(path, audit) as led:
        before = led.report("household", now=NOW + timedelta(hours=3))
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TRIGGER charges_settle_only")
    conn.execute("UPDATE charges SET steps_charged = 0")
    conn.close()
    with open_ledger(path, audit) as led:
        assert led.report("household", now=NOW + timedelta(hours=3)).epsilon_spent == 0
        message = await refused(led, audit)
        assert "steps_charged differ from the audit log" in message
        await LedgerGuard(led, audit.records).rebuild()
        assert led.report("household", now=NOW + timedelta(hours=3)) == before


@pytest.mark.usefixtures("history")
async def test_an_edited_privacy_curve_is_found(path: Path, audit: AuditLog) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TRIGGER charges_settle_only")
    conn.execute("UPDATE charges SET rdp = zeroblob(length(rdp))")  # same orders tag
    conn.close()
    with open_ledger(path, audit) as led:
        assert "stored privacy curve was edited" in await refused(led, audit)


@pytest.mark.usefixtures("history")
async def test_a_rolled_back_header_is_found(path: Path, audit: AuditLog) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TRIGGER header_forward_only")
    conn.execute("UPDATE ledger_header SET high_water_us = 0")
    conn.close()
    with open_ledger(path, audit) as led:
        assert "its header was rolled back" in await refused(led, audit)
        await LedgerGuard(led, audit.records).rebuild()
        # The rebuilt clock is the trail's latest time: going back before it is refused.
        with pytest.raises(FailedPrecondition, match="clock went backwards"):
            led.check_time(NOW)


@pytest.mark.usefixtures("history")
async def test_an_overwritten_file_header_is_found_and_rebuilt(path: Path, audit: AuditLog) -> None:
    with open_ledger(path, audit) as led:
        rows, hwm, _ = led.rows()
    with path.open("r+b") as f:
        f.write(b"\0" * 100)
    with pytest.raises(LedgerUnreadable, match="roost personalize ledger rebuild"):
        open_ledger(path, audit)
    # The service sets the file aside and opens an empty ledger, which the check refuses.
    set_aside(path)
    with open_ledger(path, audit) as led:
        await refused(led, audit)
        await LedgerGuard(led, audit.records).rebuild()
        assert led.rows() == (rows, hwm, [])


async def test_the_audit_log_unavailable_fails_closed(path: Path, audit: AuditLog) -> None:
    with open_ledger(path, audit) as led:
        a = led.reserve("household", RUN, job_id="a", privacy_unit="day", now=NOW)
        audit.down = True
        with pytest.raises(Unavailable):
            led.reserve("household", RUN, job_id="b", privacy_unit="day", now=NOW)
        with pytest.raises(Unavailable):
            led.commit(a.id, steps_done=1, now=NOW)
        with pytest.raises(Unavailable):
            await LedgerGuard(led, audit.records).check()
        # Nothing the audit log did not take was kept: a stays fully charged, b never was.
        (entry,) = led.history("household")
        assert (entry.job_id, entry.status, entry.steps_charged) == ("a", "reserved", 100)
        audit.down = False
        await LedgerGuard(led, audit.records).check()


async def test_a_forged_refund_in_the_audit_log_is_not_trusted(path: Path, audit: AuditLog) -> None:
    with open_ledger(path, audit) as led:
        a = led.reserve("household", RUN, job_id="a", privacy_unit="day", now=NOW)
        led.commit(a.id, steps_done=100, now=NOW)
        # Another audit writer appends a "release" of the spent run.
        forged = PrivacyRecord.from_decision(audit.decisions[-1])
        row = list(forged.row)
        row[7], row[9] = "released", 0
        audit.decisions.append(PrivacyRecord("release", tuple(row)).decision("x"))
        message = str((await LedgerGuard(led, audit.records).problems())[0])
        assert "break the ledger's rules (e.g. privacy.release." in message
        with pytest.raises(FailedPrecondition, match="not rebuilt"):
            await LedgerGuard(led, audit.records).rebuild()
        assert led.history("household")[0].steps_charged == 100


async def test_a_version_1_ledger_is_recorded_once_and_can_then_be_rebuilt(
    path: Path, audit: AuditLog
) -> None:
    """A ledger from before the audit trail: its charges are put in the audit log at the
    first start (so an upgrade neither refuses training forever nor loses the spend)."""
    path.parent.mkdir(parents=True)
    conn = kit_sqlite.connect_durable(path, what="test")
    kit_sqlite.migrate(conn, ledger_schema.MIGRATIONS[:1], what="test")
    t = to_us(NOW)
    for job, status, done, charged in [
        ("committed", "committed", 50, 50),
        ("reserved", "reserved", None, 100),
        ("released", "released", None, 0),
        ("zero", "released", 0, 0),
    ]:
        settled = None if status == "reserved" else t + 1
        conn.execute(
            "INSERT INTO charges VALUES (?, ?, 'household', 'dp_sgd', 1.0, 0.02, 100, ?, ?, ?,"
            " ?, ?, 0, 1, 'rdp', 1e-5, 4.0, 1.0, x'00', 'old')",
            (f"id-{job}", job, status, done, charged, t, settled),
        )
    conn.close()
    with open_ledger(path, audit) as led:
        rows, hwm, _ = led.rows()
        guard = LedgerGuard(led, audit.records)
        assert "never recorded in the audit log" in await refused(led, audit)
        await guard.record_untrailed()
        await guard.check()
        assert led.record_untrailed() == 0  # once
        n = len(audit.decisions)
    delete(path)
    with open_ledger(path, audit) as led:
        assert await LedgerGuard(led, audit.records).rebuild() == (n, 4)
        rebuilt, rebuilt_hwm, _ = led.rows()
        assert rebuilt == rows
        assert rebuilt_hwm == hwm
