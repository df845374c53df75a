"""The ledger's triggers cover every column, and its files are private.

Each edit an attacker with the file would try by hand: refunding a charge
(``UPDATE ... SET steps_charged = 0``), rewriting any other column or the stored curve,
replacing a row (``INSERT OR REPLACE`` skips the delete trigger), and turning the
header's clock back or replacing the header.
"""

from __future__ import annotations

import sqlite3
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.kit import sqlite as kit_sqlite
from services.kit.clock import to_us
from services.personalization import ledger_schema
from services.personalization.ledger import PrivacyLedger
from services.personalization.ledger_records import BudgetPolicy, Mechanism

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
RUN = Mechanism.dp_sgd(noise_multiplier=1.0, sample_rate=0.02, steps=100)
POLICY = BudgetPolicy(epsilon=10.0, delta=1e-5)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.db"
    with PrivacyLedger.open(path, POLICY) as led:
        led.commit(
            led.reserve("household", RUN, job_id="a", privacy_unit="day", now=NOW).id,
            steps_done=60,
            now=NOW,
        )
        led.reserve("household", RUN, job_id="b", privacy_unit="day", now=NOW)
    return path


@pytest.fixture
def conn(db: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(db, isolation_level=None)
    yield conn
    conn.close()


@pytest.mark.parametrize(
    "edit",
    [
        "UPDATE charges SET steps_charged = 0",
        "UPDATE charges SET steps_charged = 0 WHERE job_id = 'a'",
        "UPDATE charges SET steps_done = 0, steps_charged = 0 WHERE job_id = 'a'",
        "UPDATE charges SET status = 'released', steps_charged = 0 WHERE job_id = 'a'",
        "UPDATE charges SET status = 'committed', steps_done = 1, steps_charged = 1,"
        " settled_at_us = reserved_at_us WHERE job_id = 'a'",
        "UPDATE charges SET noise_multiplier = 100",
        "UPDATE charges SET sample_rate = 0.0001",
        "UPDATE charges SET steps = 1, steps_charged = 1 WHERE job_id = 'b'",
        "UPDATE charges SET reserved_at_us = 0",
        "UPDATE charges SET period_end_us = 0",
        "UPDATE charges SET scope = 'elsewhere'",
        "UPDATE charges SET epsilon_after = 0",
        "UPDATE charges SET delta = 0.5",
        "UPDATE charges SET rdp = zeroblob(8)",
        "UPDATE charges SET rdp_orders = 'other'",
        "UPDATE charges SET settled_at_us = NULL WHERE job_id = 'a'",
        "DELETE FROM charges WHERE job_id = 'a'",
        "INSERT OR REPLACE INTO charges SELECT id, job_id, scope, kind, noise_multiplier,"
        " sample_rate, steps, 'released', steps_done, 0, reserved_at_us, settled_at_us,"
        " period_start_us, period_end_us, accountant, delta, epsilon_budget, epsilon_after,"
        " rdp, rdp_orders, privacy_unit FROM charges WHERE job_id = 'a'",
        "UPDATE charges SET privacy_unit = 'example'",
        "UPDATE charges SET privacy_unit = 'example', status = 'released', steps_charged = 0,"
        " settled_at_us = reserved_at_us WHERE job_id = 'b'",
        "UPDATE ledger_header SET high_water_us = 0",
        "UPDATE ledger_header SET ledger_id = 'other'",
        "DELETE FROM ledger_header",
        "INSERT OR REPLACE INTO ledger_header VALUES (1, 'x', 0, 0)",
    ],
)
def test_every_hand_edit_is_refused(conn: sqlite3.Connection, edit: str) -> None:
    before = conn.execute("SELECT * FROM charges ORDER BY rowid").fetchall()
    header = conn.execute("SELECT * FROM ledger_header").fetchall()
    with pytest.raises(sqlite3.DatabaseError, match=r"ledger|mechanism|append-only"):
        conn.execute(edit)
    assert conn.execute("SELECT * FROM charges ORDER BY rowid").fetchall() == before
    assert conn.execute("SELECT * FROM ledger_header").fetchall() == header


def test_the_header_clock_moves_forwards_only(conn: sqlite3.Connection) -> None:
    (hwm,) = conn.execute("SELECT high_water_us FROM ledger_header").fetchone()
    assert hwm == to_us(NOW)
    conn.execute("UPDATE ledger_header SET high_water_us = ?", (hwm + 1,))


def test_the_select_lists_the_recorded_columns() -> None:
    conn = sqlite3.connect(":memory:")
    ledger_schema.migrate(conn)
    cur = conn.execute(ledger_schema.SELECT)
    assert tuple(d[0] for d in cur.description) == ledger_schema.COLUMNS


def test_files_are_private(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    path.touch(mode=0o644)  # a ledger made before files were private
    path.chmod(0o644)
    with PrivacyLedger.open(path, POLICY) as led:
        led.reserve("household", RUN, job_id="a", privacy_unit="day", now=NOW)
        files = [p for p in tmp_path.iterdir() if p.name.startswith("ledger.db")]
        assert {p.name for p in files} >= {"ledger.db", "ledger.db-wal"}
        for p in files:
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p.name


def test_a_version_1_ledger_is_migrated_with_its_clock(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    conn = kit_sqlite.connect_durable(path, what="test")
    kit_sqlite.migrate(conn, ledger_schema.MIGRATIONS[:1], what="test")
    conn.execute(
        "INSERT INTO charges VALUES ('r', 'j', 'household', 'dp_sgd', 1.0, 0.02, 100,"
        " 'committed', 50, 50, ?, ?, 0, 1, 'rdp', 1e-5, 4.0, 1.0, x'00', 'x')",
        (to_us(NOW), to_us(NOW + timedelta(hours=1))),
    )
    conn.close()
    with PrivacyLedger.open(path, POLICY) as led:
        rows, hwm, _ = led.rows()
        assert [r[0] for r in rows] == ["r"]
        assert hwm == to_us(NOW + timedelta(hours=1))
