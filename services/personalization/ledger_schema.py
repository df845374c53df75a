"""The privacy ledger's SQLite schema: tables, the triggers that guard every column, rows.

Two tables. ``charges`` holds one row per mechanism (a reservation and how it was
settled); ``ledger_header`` holds one row: the ledger's id, when it was created, and the
latest time the ledger has seen (``high_water_us``, see :mod:`.ledger`), and how many
charges a version-1 ledger held before its changes were recorded in the audit log
(``untrailed``, recorded once at start, then 0).

**Triggers cover every column** of both tables. A charge row may only move
``reserved -> committed`` (``steps_done = steps_charged``), ``reserved -> released``
(``steps_charged = 0``) or, for a run that committed no step, ``committed -> released``;
every other column never changes, no row is deleted, and no row is inserted over
another (``INSERT OR REPLACE`` deletes without firing the delete trigger, so inserts are
guarded too). Version 3 added each charge's ``privacy_unit`` (what its ε protects,
:mod:`.privacy_unit`); rows made before it are :data:`LEGACY_UNIT`. The header may only
move ``high_water_us`` forwards. A hand edit such as
``UPDATE charges SET steps_charged = 0`` is refused with an SQLite error. Triggers live
in the file and can be dropped by whoever can write it: the cross-check against the
audit log (:mod:`.ledger_trail`) is what detects an edit that went around them.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from services.kit import sqlite as kit_sqlite
from services.kit.clock import from_us
from services.kit.errors import Unavailable
from services.personalization.accounting import ORDERS_DIGEST, unit_rdp
from services.personalization.ledger_records import LedgerEntry, Mechanism, Reservation

#: The columns of a charge as the audit trail records them (everything but the RDP curve,
#: which is a function of noise_multiplier and sample_rate), in ``SELECT`` order.
COLUMNS: Final = (
    "id",
    "job_id",
    "scope",
    "kind",
    "noise_multiplier",
    "sample_rate",
    "steps",
    "status",
    "steps_done",
    "steps_charged",
    "reserved_at_us",
    "settled_at_us",
    "period_start_us",
    "period_end_us",
    "accountant",
    "delta",
    "epsilon_budget",
    "epsilon_after",
    "privacy_unit",
)
SELECT: Final = (
    "SELECT id, job_id, scope, kind, noise_multiplier, sample_rate, steps, status, steps_done,"
    " steps_charged, reserved_at_us, settled_at_us, period_start_us, period_end_us,"
    " accountant, delta, epsilon_budget, epsilon_after, privacy_unit FROM charges"
)
#: Every row with its stored curve, for the cross-check.
SELECT_WITH_CURVES: Final = (
    "SELECT id, job_id, scope, kind, noise_multiplier, sample_rate, steps, status, steps_done,"
    " steps_charged, reserved_at_us, settled_at_us, period_start_us, period_end_us,"
    " accountant, delta, epsilon_budget, epsilon_after, privacy_unit, rdp, rdp_orders"
    " FROM charges ORDER BY rowid"
)
INSERT: Final = (
    "INSERT INTO charges (id, job_id, scope, kind, noise_multiplier, sample_rate, steps,"
    " status, steps_done, steps_charged, reserved_at_us, settled_at_us, period_start_us,"
    " period_end_us, accountant, delta, epsilon_budget, epsilon_after, privacy_unit, rdp,"
    " rdp_orders) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
#: What a row made before the unit was recorded (schema versions 1 and 2) protects:
#: DP-SGD clipped and noised each example (one labelled row) until the household-day
#: unit came (commit 332b8ff); a day-unit charge labelled "example" is still true (a
#: guarantee for a day holds for each of its rows), so the label errs on the safe side.
LEGACY_UNIT: Final = "example"


def _unchanged(columns: Sequence[str]) -> str:
    """SQL: every column but the settlement's (status, steps, settled_at_us) unchanged."""
    settlement = ("status", "steps_done", "steps_charged", "settled_at_us")
    return " AND ".join(
        f"NEW.{c} IS OLD.{c}" for c in (*columns, "rdp", "rdp_orders") if c not in settlement
    )


def _settle_only(columns: Sequence[str]) -> str:
    return f"""CREATE TRIGGER charges_settle_only BEFORE UPDATE ON charges
            WHEN NOT ({_unchanged(columns)} AND NEW.settled_at_us IS NOT NULL
                      AND NEW.settled_at_us >= OLD.reserved_at_us AND ({_SETTLED}))
            BEGIN
                SELECT RAISE(ABORT, 'a charged mechanism cannot be rewritten, only settled once');
            END"""


_SETTLED: Final = (
    "(OLD.status = 'reserved' AND NEW.status = 'committed'"
    " AND NEW.steps_done IS NEW.steps_charged)"
    " OR (OLD.status = 'reserved' AND NEW.status = 'released'"
    " AND NEW.steps_done IS NULL AND NEW.steps_charged = 0)"
    " OR (OLD.status = 'committed' AND OLD.steps_done = 0 AND NEW.status = 'released'"
    " AND NEW.steps_done IS OLD.steps_done AND NEW.steps_charged = 0)"
)

MIGRATIONS: Final[tuple[tuple[kit_sqlite.Step, ...], ...]] = (
    (
        # steps_charged: what counts now (steps while reserved, steps_done once
        # committed, 0 once released). rdp: per-step RDP curve at accounting.ORDERS (float64 LE).
        """CREATE TABLE charges (
            id TEXT PRIMARY KEY,
            job_id TEXT NOT NULL UNIQUE,
            scope TEXT NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('dp_sgd', 'gaussian')),
            noise_multiplier REAL NOT NULL CHECK (noise_multiplier > 0),
            sample_rate REAL NOT NULL CHECK (sample_rate > 0 AND sample_rate <= 1),
            steps INTEGER NOT NULL CHECK (steps >= 1),
            status TEXT NOT NULL CHECK (status IN ('reserved', 'committed', 'released')),
            steps_done INTEGER,
            steps_charged INTEGER NOT NULL CHECK (steps_charged BETWEEN 0 AND steps),
            reserved_at_us INTEGER NOT NULL,
            settled_at_us INTEGER,
            period_start_us INTEGER NOT NULL,
            period_end_us INTEGER NOT NULL,
            accountant TEXT NOT NULL,
            delta REAL NOT NULL,
            epsilon_budget REAL NOT NULL,
            epsilon_after REAL NOT NULL,
            rdp BLOB NOT NULL,
            rdp_orders TEXT NOT NULL
        )""",
        "CREATE INDEX charges_scope_time ON charges(scope, reserved_at_us)",
        """CREATE TRIGGER charges_no_delete BEFORE DELETE ON charges
            BEGIN SELECT RAISE(ABORT, 'the privacy ledger is append-only'); END""",
        """CREATE TRIGGER charges_immutable BEFORE UPDATE OF id, job_id, scope, kind,
            noise_multiplier, sample_rate, steps, reserved_at_us, period_start_us,
            period_end_us, accountant, delta, epsilon_budget, epsilon_after ON charges
            BEGIN SELECT RAISE(ABORT, 'a charged mechanism cannot be rewritten'); END""",
    ),
    (
        # v2: every column guarded, no insert over a row, and the header (high-water mark).
        "DROP TRIGGER charges_immutable",
        _settle_only(COLUMNS[:-1]),  # the columns of version 2 (before privacy_unit)
        """CREATE TRIGGER charges_no_overwrite BEFORE INSERT ON charges
            WHEN EXISTS (SELECT 1 FROM charges WHERE id = NEW.id OR job_id = NEW.job_id)
            BEGIN SELECT RAISE(ABORT, 'the privacy ledger is append-only'); END""",
        """CREATE TABLE ledger_header (
            one INTEGER PRIMARY KEY CHECK (one = 1),
            ledger_id TEXT NOT NULL,
            created_at_us INTEGER NOT NULL,
            high_water_us INTEGER NOT NULL,
            untrailed INTEGER NOT NULL
        )""",
        """INSERT INTO ledger_header VALUES (1, lower(hex(randomblob(16))),
            CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER),
            COALESCE((SELECT MAX(t) FROM (SELECT reserved_at_us AS t FROM charges
                      UNION ALL SELECT settled_at_us FROM charges)), 0),
            (SELECT COUNT(*) FROM charges))""",
        """CREATE TRIGGER header_no_delete BEFORE DELETE ON ledger_header
            BEGIN SELECT RAISE(ABORT, 'the ledger header cannot be removed'); END""",
        """CREATE TRIGGER header_one_row BEFORE INSERT ON ledger_header
            WHEN EXISTS (SELECT 1 FROM ledger_header)
            BEGIN SELECT RAISE(ABORT, 'the ledger header cannot be replaced'); END""",
        """CREATE TRIGGER header_forward_only BEFORE UPDATE ON ledger_header
            WHEN NOT (NEW.one IS OLD.one AND NEW.ledger_id IS OLD.ledger_id
                      AND NEW.created_at_us IS OLD.created_at_us
                      AND NEW.high_water_us >= OLD.high_water_us
                      AND (NEW.untrailed IS OLD.untrailed OR NEW.untrailed = 0))
            BEGIN SELECT RAISE(ABORT, 'the ledger clock only moves forwards'); END""",
    ),
    (
        # v3: the privacy unit of every charge (LEGACY_UNIT for the rows before it), and
        # the settle-only trigger guarding it like every other column.
        f"""ALTER TABLE charges ADD COLUMN privacy_unit TEXT NOT NULL DEFAULT '{LEGACY_UNIT}'
            CHECK (privacy_unit IN ('day', 'example'))""",
        "DROP TRIGGER charges_settle_only",
        _settle_only(COLUMNS),
    ),
)
SCHEMA_VERSION: Final = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection) -> int:
    """Brings the schema to SCHEMA_VERSION (one transaction per version; safe to race)."""
    return kit_sqlite.migrate(conn, MIGRATIONS, what="privacy ledger")


def connect(path: Path, busy_timeout_s: float) -> sqlite3.Connection:
    """The migrated ledger database at ``path``, mode 0600 (Unavailable if it cannot be
    opened; a file that is not a ledger database raises ``sqlite3.DatabaseError``)."""
    try:
        conn = kit_sqlite.connect_durable(
            path,
            what="privacy ledger",
            busy_timeout_s=busy_timeout_s,
            private=True,
            check_same_thread=False,  # the ledger's lock serializes the threads
        )
    except sqlite3.OperationalError as e:
        raise Unavailable(f"privacy ledger: cannot open the database ({e})") from e
    try:
        migrate(conn)
        for suffix in ("", "-wal", "-shm"):
            side = path.with_name(path.name + suffix)
            if side.exists():
                os.chmod(side, 0o600)  # also a ledger made before files were private
    except sqlite3.OperationalError as e:
        conn.close()
        raise Unavailable(f"privacy ledger: cannot open the database ({e})") from e
    except BaseException:
        conn.close()
        raise
    return conn


def insert(conn: sqlite3.Connection, row: Sequence[Any]) -> None:
    """Inserts a charge row (``COLUMNS``) with its mechanism's per-step privacy curve."""
    curve = unit_rdp(float(row[4]), float(row[5])).tobytes()
    conn.execute(INSERT, (*row, curve, ORDERS_DIGEST))


def write(path: Path, rows: Sequence[Sequence[Any]], high_water_us: int) -> None:
    """A new ledger file at ``path`` holding exactly ``rows`` and the high-water mark."""
    conn = connect(path, 60.0)
    try:
        conn.execute("BEGIN IMMEDIATE")
        for row in rows:
            insert(conn, row)
        conn.execute(
            "UPDATE ledger_header SET high_water_us = MAX(high_water_us, ?)", (int(high_water_us),)
        )
        conn.execute("COMMIT")
    finally:
        conn.close()


def entry(row: Sequence[Any]) -> LedgerEntry:
    """A ``SELECT`` row as a :class:`LedgerEntry`."""
    kind, noise, rate, steps = row[3:7]
    return LedgerEntry(
        id=row[0],
        job_id=row[1],
        scope=row[2],
        mechanism=Mechanism(kind, float(noise), float(rate), int(steps)),
        status=row[7],
        steps_done=row[8],
        steps_charged=int(row[9]),
        reserved_at=from_us(row[10]),
        settled_at=None if row[11] is None else from_us(row[11]),
        period_start=from_us(row[12]),
        period_end=from_us(row[13]),
        accountant=row[14],
        delta=float(row[15]),
        epsilon_budget=float(row[16]),
        epsilon_after=float(row[17]),
        privacy_unit=row[18],
    )


def reservation(e: LedgerEntry) -> Reservation:
    return Reservation(
        id=e.id,
        job_id=e.job_id,
        scope=e.scope,
        mechanism=e.mechanism,
        epsilon_after=e.epsilon_after,
        epsilon_budget=e.epsilon_budget,
        delta=e.delta,
        accountant=e.accountant,
        reserved_at=e.reserved_at,
        period_start=e.period_start,
        period_end=e.period_end,
        privacy_unit=e.privacy_unit,
    )
