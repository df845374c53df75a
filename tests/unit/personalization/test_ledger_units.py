"""Every charge records its privacy unit, and units are never composed into one epsilon.

An old ledger (written by the schema-2 code, tests/unit/personalization/data/
ledger_v2.sql) opens with its rows in the example unit, still matches its old audit
trail and rebuilds exactly; a reservation in a unit other than one already charged in
the window is refused (nothing written, nothing recorded) until the window is clear;
the audit record carrying the unit stays within the audit log's text limit in the
worst case. tests/integration/test_personalization_units.py runs the refusal over real
gRPC.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from roost.audit.v1 import audit_service_pb2 as audit_pb
from services.audit.limits import MAX_TEXT_CHARS
from services.audit.records import prepare
from services.kit.errors import FailedPrecondition, InvalidArgument
from services.personalization import ledger_schema
from services.personalization.ledger import PrivacyLedger
from services.personalization.ledger_guard import LedgerGuard
from services.personalization.ledger_records import BudgetPolicy, Mechanism
from services.personalization.ledger_trail import (
    PRIVACY_MODEL,
    PrivacyRecord,
    expected_rows,
)
from tests.unit.personalization.test_ledger_guard import AuditLog, delete

DATA = Path(__file__).parent / "data"
NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)  # the v2 fixture's runs: NOW .. NOW + 2 h
RUN = Mechanism.dp_sgd(noise_multiplier=1.0, sample_rate=0.02, steps=100)
POLICY = BudgetPolicy(epsilon=4.0, delta=1e-5)
UNIT = ledger_schema.COLUMNS.index("privacy_unit")


def old_ledger(path: Path) -> None:
    """The ledger file the schema-2 code wrote (its own DDL, triggers and rows)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript((DATA / "ledger_v2.sql").read_text())
    conn.close()


def old_trail() -> AuditLog:
    """The audit records the schema-2 code appended for that ledger (JSON objects)."""
    audit = AuditLog()
    for r in json.loads((DATA / "ledger_v2.trail.json").read_text()):
        d = audit_pb.Decision(
            decision_id=r["decision_id"], action=r["action"], output_label=r["output_label"]
        )
        d.model.name = PRIVACY_MODEL
        audit.decisions.append(d)
    return audit


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "ledger.db"


# ---- the migration


def test_the_fixture_is_a_version_2_ledger(path: Path) -> None:
    old_ledger(path)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    columns = [r[1] for r in conn.execute("PRAGMA table_info(charges)")]
    conn.close()
    assert "privacy_unit" not in columns
    assert len(columns) == 20


async def test_an_old_ledger_opens_in_the_example_unit_and_matches_its_old_trail(
    path: Path,
) -> None:
    old_ledger(path)
    audit = old_trail()
    with PrivacyLedger.open(path, POLICY, recorder=audit.record) as led:
        rows, hwm, altered = led.rows()
        assert [r[1] for r in rows] == ["a", "b", "c"]
        assert {r[UNIT] for r in rows} == {ledger_schema.LEGACY_UNIT} == {"example"}
        assert altered == []
        assert [e.privacy_unit for e in led.history("household")] == ["example"] * 3
        # The old trail (objects without a unit) reads back in the same unit: no mismatch.
        await LedgerGuard(led, audit.records).check()
        assert await LedgerGuard(led, audit.records).rebuild() == (5, 3)
        assert led.rows() == (rows, hwm, [])
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == ledger_schema.SCHEMA_VERSION == 3
    conn.close()


@pytest.mark.parametrize(
    "edit",
    [
        "UPDATE charges SET privacy_unit = 'day'",
        "UPDATE charges SET privacy_unit = 'day', status = 'committed', steps_done = 1,"
        " steps_charged = 1, settled_at_us = reserved_at_us WHERE job_id = 'c'",
        "INSERT OR REPLACE INTO charges SELECT id, job_id, scope, kind, noise_multiplier,"
        " sample_rate, steps, status, steps_done, steps_charged, reserved_at_us, settled_at_us,"
        " period_start_us, period_end_us, accountant, delta, epsilon_budget, epsilon_after,"
        " rdp, rdp_orders, 'day' FROM charges WHERE job_id = 'a'",
    ],
)
def test_the_triggers_guard_the_migrated_unit_column(path: Path, edit: str) -> None:
    old_ledger(path)
    with PrivacyLedger.open(path, POLICY):
        pass  # migrated
    conn = sqlite3.connect(path, isolation_level=None)
    before = conn.execute("SELECT * FROM charges ORDER BY rowid").fetchall()
    with pytest.raises(sqlite3.DatabaseError, match=r"mechanism|append-only"):
        conn.execute(edit)
    assert conn.execute("SELECT * FROM charges ORDER BY rowid").fetchall() == before
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        conn.execute(
            "INSERT INTO charges SELECT 'x', 'x', scope, kind, noise_multiplier, sample_rate,"
            " steps, status, steps_done, steps_charged, reserved_at_us, settled_at_us,"
            " period_start_us, period_end_us, accountant, delta, epsilon_budget,"
            " epsilon_after, rdp, rdp_orders, 'week' FROM charges WHERE job_id = 'a'"
        )
    conn.close()


async def test_a_day_run_after_an_upgrade_waits_for_the_old_example_charges(path: Path) -> None:
    old_ledger(path)
    audit = old_trail()
    with PrivacyLedger.open(path, POLICY, recorder=audit.record) as led:
        clear = NOW + timedelta(hours=2) + POLICY.window  # 'c', still reserved, is the latest
        n = len(audit.decisions)
        with pytest.raises(FailedPrecondition) as e:
            led.reserve("household", RUN, job_id="d", privacy_unit="day", now=clear)
        assert clear.isoformat() in str(e.value)
        assert len(audit.decisions) == n
        assert len(led.history("household")) == 3
        later = clear + timedelta(microseconds=1)
        r = led.reserve("household", RUN, job_id="d", privacy_unit="day", now=later)
        assert r.privacy_unit == "day"
        await LedgerGuard(led, audit.records).check()  # old and new records together


# ---- the refusal


def test_a_unit_switch_inside_the_window_is_refused_until_it_is_clear(path: Path) -> None:
    audit = AuditLog()
    with PrivacyLedger.open(path, POLICY, recorder=audit.record) as led:
        first = led.reserve("household", RUN, job_id="a", privacy_unit="day", now=NOW)
        led.commit(first.id, steps_done=50, now=NOW + timedelta(minutes=5))
        last = NOW + timedelta(days=3)
        led.reserve("household", RUN, job_id="b", privacy_unit="day", now=last)
        history, n = led.history("household"), len(audit.decisions)
        report = led.report("household", now=last)
        clear = last + POLICY.window
        assert report.units == (("day", clear),)
        for at in (last, clear - timedelta(microseconds=1)):
            with pytest.raises(FailedPrecondition) as e:
                led.reserve("household", RUN, job_id="x", privacy_unit="example", now=at)
            message = str(e.value)
            assert "'example' (example (one labelled row))" in message
            assert "'day' (household-day)" in message
            assert f"refused until {clear.isoformat()}" in message
            assert "privacy_unit back to 'day'" in message
        # Nothing written, nothing recorded, nothing spent.
        assert led.history("household") == history
        assert len(audit.decisions) == n
        assert led.report("household", now=last) == report
        # The same unit goes on composing; another scope has its own window.
        led.reserve("household", Mechanism.gaussian(noise_multiplier=50.0), job_id="c",
                    privacy_unit="day", now=last)  # fmt: skip
        led.reserve("comfort", RUN, job_id="o", privacy_unit="example", now=last)
        # Once the window is clear, the other unit may start.
        later = clear + timedelta(microseconds=1)
        ok = led.reserve("household", RUN, job_id="x", privacy_unit="example", now=later)
        assert ok.privacy_unit == "example"
        assert led.report("household", now=later).units == (("example", later + POLICY.window),)


def test_a_released_charge_does_not_hold_its_unit(path: Path) -> None:
    with PrivacyLedger.open(path, POLICY) as led:
        r = led.reserve("household", RUN, job_id="a", privacy_unit="day", now=NOW)
        led.release(r.id, now=NOW)
        assert led.report("household", now=NOW).units == ()
        led.reserve("household", RUN, job_id="b", privacy_unit="example", now=NOW)


def test_a_retried_reservation_in_another_unit_is_refused(path: Path) -> None:
    with PrivacyLedger.open(path, POLICY) as led:
        r = led.reserve("household", RUN, job_id="a", privacy_unit="day", now=NOW)
        assert led.reserve("household", RUN, job_id="a", privacy_unit="day", now=NOW) == r
        with pytest.raises(InvalidArgument, match="privacy unit"):
            led.reserve("household", RUN, job_id="a", privacy_unit="example", now=NOW)
        with pytest.raises(InvalidArgument, match="privacy_unit"):
            led.reserve("household", RUN, job_id="b", privacy_unit="week", now=NOW)


@pytest.mark.parametrize(
    "job_id", ["j" * 129, "a b", "a/b", "é", "a\nb", "a'b", '"', "x" * 1000, ""]
)
def test_job_ids_are_bounded(path: Path, job_id: str) -> None:
    with PrivacyLedger.open(path, POLICY) as led:
        with pytest.raises(InvalidArgument, match="job_id"):
            led.reserve("household", RUN, job_id=job_id, privacy_unit="day", now=NOW)
        assert led.history("household") == []


def test_scopes_are_bounded(path: Path) -> None:
    with (
        PrivacyLedger.open(path, POLICY) as led,
        pytest.raises(InvalidArgument, match="scope: at most 64"),
    ):
        led.reserve("s" * 65, RUN, job_id="a", privacy_unit="day", now=NOW)


# ---- the audit record


def worst_rows() -> list[tuple[object, ...]]:
    """Rows with the longest value each column can hold (17-digit floats with 3-digit
    exponents, year-1 timestamps, the most steps, the longest job id and scope; epsilon
    after and delta are also output_values, float32, so the long one is a tiny one)."""
    big, small, t = 1.2345678901234567e300, 2.2250738585072014e-308, -62135596800000000
    return [
        ("f" * 32, "J" * 128, "s" * 64, "gaussian", big, small, 10_000_000, status,
         10_000_000, 10_000_000, t, t, t, t, "rdp", small, big, small, unit)
        for status in ("reserved", "committed", "released")
        for unit in ("day", "example")
    ]  # fmt: skip


def test_the_worst_case_record_fits_the_audit_texts() -> None:
    assert len(repr(1.2345678901234567e300)) == len(repr(2.2250738585072014e-308)) == 23
    lengths = []
    actions = {"reserved": "reserve", "committed": "commit", "released": "release"}
    for row in worst_rows():
        for action in (actions[str(row[7])],):
            d = PrivacyRecord(action, row).decision("h" * 64)  # type: ignore[arg-type]
            prepare([d])  # the audit service takes it
            lengths.append((len(d.output_label), len(d.policy.reason)))
            assert PrivacyRecord.from_decision(d).row == row  # exactly back
    label, reason = max(n for n, _ in lengths), max(n for _, n in lengths)
    print(f"worst case: output_label {label} chars, policy.reason {reason} of {MAX_TEXT_CHARS}")
    assert label <= MAX_TEXT_CHARS
    assert reason <= MAX_TEXT_CHARS
    assert label == 496  # measured: 16 characters to spare (the reason: 233)


def test_a_record_with_an_unknown_unit_breaks_the_rules() -> None:
    row = list(worst_rows()[0])
    row[UNIT] = "week"
    record = PrivacyRecord("reserve", tuple(row))
    assert expected_rows([record])[2] == [f"privacy.reserve.{'f' * 32}"]


async def test_a_rebuild_restores_each_charge_in_its_own_unit(path: Path) -> None:
    audit = AuditLog()
    long_ago = NOW - 2 * POLICY.window
    with PrivacyLedger.open(path, POLICY, recorder=audit.record) as led:
        old = led.reserve("household", RUN, job_id="old", privacy_unit="example", now=long_ago)
        led.commit(old.id, steps_done=100, now=long_ago)
        led.reserve("household", RUN, job_id="new", privacy_unit="day", now=NOW)
        rows, hwm, _ = led.rows()
        report = led.report("household", now=NOW)
    delete(path)
    with PrivacyLedger.open(path, POLICY, recorder=audit.record) as led:
        await LedgerGuard(led, audit.records).rebuild()
        assert led.rows() == (rows, hwm, [])
        assert [e.privacy_unit for e in led.history("household")] == ["example", "day"]
        assert led.report("household", now=NOW) == report
        with pytest.raises(FailedPrecondition, match="privacy unit changed"):
            led.reserve("household", RUN, job_id="x", privacy_unit="example", now=NOW)
