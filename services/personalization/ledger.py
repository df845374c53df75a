"""Persistent privacy ledger: a household's differential-privacy budget can never be overspent.

Every differentially private use of household data on the hub (a DP-SGD fine-tuning run, a
noised model delta sent upstream) is a *mechanism* charged to a *data scope* ("household",
"household/occupancy", ...). Per scope, a :class:`BudgetPolicy` allows ``epsilon`` at
``delta`` per *period*; the ledger composes everything charged to the scope in the current
period with an Opacus accountant (RDP or PRV) and refuses a mechanism whose composition
would exceed the budget.

**Scopes** are independent: each one is meant to cover a disjoint part of the household's
data (parallel composition), so spending on "household/occupancy" does not touch
"household/comfort". A caller that trains on two scopes' data must charge both.

**Periods** are fixed UTC windows of ``period_days`` days counted from the Unix epoch
(1970-01-01T00:00:00Z): period ``k`` is ``[EPOCH + k * period_days, EPOCH + (k + 1) *
period_days)``. They depend only on the clock and the policy, never on when the hub
started, so a restart (or a wiped in-memory cache) cannot reset the budget. A mechanism is
charged to the period of its reservation time, whenever it is committed. Changing
``period_days`` moves the window boundaries: that is an operator's decision, not a user's.

**Why reservations.** A DP-SGD run touches the data for minutes; if the ledger recorded
the spend only afterwards, two concurrent jobs (threads, or the service and a CLI) could
both pass the check and overspend together, and a crash mid-run would leave a spend that
was never recorded. So a job first reserves its full mechanism: in ONE ``BEGIN IMMEDIATE``
transaction (SQLite's write lock, shared by all threads and processes) the ledger reads
every mechanism charged to the scope in the period (committed AND still reserved),
composes them plus the new one, and either refuses
(:class:`FailedPrecondition`, nothing written) or durably records the reservation. The job
then commits the steps it actually ran (fewer steps spend less) or releases the
reservation if it never touched the data. A job that crashes leaves its reservation
charged at the full reserved steps: conservative, since the ledger cannot know how far it
got. Nothing is ever deleted: ``history`` shows every mechanism with its status.

**Accounting.** The composition is :mod:`services.personalization.accounting`: exactly
Opacus' RDP accountant (the default) or its PRV accountant, which falls back to the RDP
bound when it would be too costly. Each row stores its mechanism's per-step RDP curve, so
composing a period's history is a vector sum. A history whose epsilon is infinite is
refused.

**Concurrency.** One SQLite connection per :class:`PrivacyLedger`, guarded by a lock, so an
instance may be shared by threads; separate processes open their own instance. Every
operation is one explicit transaction (``BEGIN IMMEDIATE`` for writes), the database runs
in WAL mode with ``synchronous=FULL`` (a returned reservation survives power loss) and the
schema is versioned with ``PRAGMA user_version``.
"""

from __future__ import annotations

import logging
import math
import re
import sqlite3
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from services.kit import sqlite as kit_sqlite
from services.kit.clock import from_us, to_us
from services.kit.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from services.personalization.accounting import (
    ORDERS_DIGEST,
    Charge,
    compose,
    stored_rdp,
    unit_rdp,
)
from services.personalization.ledger_records import (
    BudgetPolicy,
    BudgetReport,
    LedgerEntry,
    Mechanism,
    Reservation,
    aware_utc,
    integer,
)

logger = logging.getLogger(__name__)

_SCOPE_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)*")
_MAX_NAME_CHARS: Final = 200

_MIGRATIONS: Final[tuple[tuple[kit_sqlite.Step, ...], ...]] = (
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
)
SCHEMA_VERSION: Final = len(_MIGRATIONS)

_SELECT: Final = (
    "SELECT id, job_id, scope, kind, noise_multiplier, sample_rate, steps, status, steps_done,"
    " steps_charged, reserved_at_us, settled_at_us, period_start_us, period_end_us,"
    " accountant, delta, epsilon_budget, epsilon_after FROM charges"
)


def _now(now: datetime | None) -> datetime:
    return datetime.now(UTC) if now is None else aware_utc(now)


def _name(field: str, value: object, *, scope: bool = False) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"{field}: required (a non-empty string)")
    if len(value) > _MAX_NAME_CHARS:
        raise InvalidArgument(f"{field}: at most {_MAX_NAME_CHARS} characters")
    if scope and not _SCOPE_RE.fullmatch(value):
        raise InvalidArgument(
            f"{field}: must be '/'-separated names of letters, digits, '_', '.', '-'"
        )
    if not scope and not value.isprintable():
        raise InvalidArgument(f"{field}: must be printable")
    return value


def migrate(conn: sqlite3.Connection) -> int:
    """Brings the schema to SCHEMA_VERSION (one transaction per version; safe to race)."""
    return kit_sqlite.migrate(conn, _MIGRATIONS, what="privacy ledger")


def _mechanism(row: Sequence[Any]) -> Mechanism:
    kind, noise, rate, steps = row
    return Mechanism(kind, float(noise), float(rate), int(steps))


def _entry(row: Sequence[Any]) -> LedgerEntry:
    return LedgerEntry(
        id=row[0],
        job_id=row[1],
        scope=row[2],
        mechanism=_mechanism(row[3:7]),
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
    )


def _reservation(entry: LedgerEntry) -> Reservation:
    return Reservation(
        id=entry.id,
        job_id=entry.job_id,
        scope=entry.scope,
        mechanism=entry.mechanism,
        epsilon_after=entry.epsilon_after,
        epsilon_budget=entry.epsilon_budget,
        delta=entry.delta,
        accountant=entry.accountant,
        reserved_at=entry.reserved_at,
        period_start=entry.period_start,
        period_end=entry.period_end,
    )


# --------------------------------------------------------------------------- the ledger


class PrivacyLedger(kit_sqlite.SharedConnection):
    """The persistent per-scope privacy budget. Thread-safe; open one per process."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        policy: BudgetPolicy,
        scope_policies: Mapping[str, BudgetPolicy] | None = None,
    ) -> None:
        if not isinstance(policy, BudgetPolicy):
            raise InvalidArgument("policy: must be a BudgetPolicy")
        super().__init__(conn, what="privacy ledger")
        self._policy = policy
        self._scope_policies: dict[str, BudgetPolicy] = {}
        for scope, scope_policy in (scope_policies or {}).items():
            if not isinstance(scope_policy, BudgetPolicy):
                raise InvalidArgument(f"scope_policies[{scope!r}]: must be a BudgetPolicy")
            self._scope_policies[_name("scope_policies", scope, scope=True)] = scope_policy

    @classmethod
    def open(
        cls,
        path: Path,
        policy: BudgetPolicy,
        *,
        scope_policies: Mapping[str, BudgetPolicy] | None = None,
        busy_timeout_s: float = 60.0,
    ) -> PrivacyLedger:
        """Opens (creating and migrating) the ledger at ``path``.

        ``policy`` applies to every scope not in ``scope_policies`` (exact scope names).
        ``busy_timeout_s`` is how long an operation waits for another writer (a PRV
        composition can hold the lock for about a second) before ``Unavailable``.
        """
        # check_same_thread=False: the instance lock serializes the threads.
        try:
            conn = kit_sqlite.connect_durable(
                path,
                what="privacy ledger",
                busy_timeout_s=busy_timeout_s,
                check_same_thread=False,
            )
        except sqlite3.OperationalError as e:
            raise Unavailable(f"privacy ledger: cannot open the database ({e})") from e
        try:
            migrate(conn)
            return cls(conn, policy, scope_policies)
        except sqlite3.OperationalError as e:
            conn.close()
            raise Unavailable(f"privacy ledger: cannot open the database ({e})") from e
        except BaseException:
            conn.close()
            raise

    def policy_for(self, scope: str) -> BudgetPolicy:
        return self._scope_policies.get(_name("scope", scope, scope=True), self._policy)

    # ---- operations

    def reserve(
        self, scope: str, mechanism: Mechanism, *, job_id: str, now: datetime | None = None
    ) -> Reservation:
        """Charges ``mechanism`` to ``scope`` if the period's budget allows it.

        Raises FailedPrecondition (nothing recorded) if the composed epsilon would exceed
        the budget. Idempotent by ``job_id``: the same job, scope and mechanism again
        returns the existing reservation; anything different is InvalidArgument.
        """
        policy = self.policy_for(scope)
        job_id = _name("job_id", job_id)
        if not isinstance(mechanism, Mechanism):
            raise InvalidArgument("mechanism: must be a Mechanism")
        at = _now(now)
        start, end = policy.period_bounds(at)
        # The new curve is computed before taking the write lock.
        new = Charge(
            mechanism.noise_multiplier,
            mechanism.sample_rate,
            mechanism.steps,
            unit_rdp(mechanism.noise_multiplier, mechanism.sample_rate),
        )
        with self._transaction("IMMEDIATE") as conn:
            row = conn.execute(_SELECT + " WHERE job_id = ?", (job_id,))
            existing = row.fetchone()
            if existing is not None:
                entry = _entry(existing)
                if entry.scope != scope or entry.mechanism != mechanism:
                    raise InvalidArgument(
                        f"job_id: job '{job_id}' already holds a reservation with a"
                        " different scope or mechanism"
                    )
                return _reservation(entry)
            charged = self._charges(conn, scope, start, end)
            eps_after, used = compose(
                [*charged, new], delta=policy.delta, accountant=policy.accountant
            )
            if not math.isfinite(eps_after):
                raise InvalidArgument(
                    f"mechanism: gives no finite epsilon at delta={policy.delta:g};"
                    " raise noise_multiplier"
                )
            if eps_after > policy.epsilon:
                eps_before, _ = compose(charged, delta=policy.delta, accountant=policy.accountant)
                logger.info(
                    "privacy budget refused: scope=%s job=%s epsilon %.4f -> %.4f > %.4g",
                    scope,
                    job_id,
                    eps_before,
                    eps_after,
                    policy.epsilon,
                )
                raise FailedPrecondition(
                    f"privacy budget exceeded for scope '{scope}': epsilon already spent"
                    f" {eps_before:.4f} this period; this run would add"
                    f" {eps_after - eps_before:.4f} (cumulative {eps_after:.4f}) over the"
                    f" budget of epsilon {policy.epsilon:g} at delta {policy.delta:g}"
                    f" ({used} accountant); the period resets at {end.isoformat()}."
                    " Lower steps or sample_rate, or raise noise_multiplier."
                )
            reservation = Reservation(
                id=uuid.uuid4().hex,
                job_id=job_id,
                scope=scope,
                mechanism=mechanism,
                epsilon_after=eps_after,
                epsilon_budget=policy.epsilon,
                delta=policy.delta,
                accountant=used,
                reserved_at=at,
                period_start=start,
                period_end=end,
            )
            conn.execute(
                "INSERT INTO charges (id, job_id, scope, kind, noise_multiplier, sample_rate,"
                " steps, status, steps_done, steps_charged, reserved_at_us, settled_at_us,"
                " period_start_us, period_end_us, accountant, delta, epsilon_budget,"
                " epsilon_after, rdp, rdp_orders)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, 'reserved', NULL, ?, ?, NULL,"
                " ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    reservation.id,
                    job_id,
                    scope,
                    mechanism.kind,
                    mechanism.noise_multiplier,
                    mechanism.sample_rate,
                    mechanism.steps,
                    mechanism.steps,
                    to_us(at),
                    to_us(start),
                    to_us(end),
                    used,
                    policy.delta,
                    policy.epsilon,
                    eps_after,
                    new.rdp.tobytes(),
                    ORDERS_DIGEST,
                ),
            )
        logger.info(
            "privacy budget reserved: scope=%s job=%s epsilon -> %.4f of %.4g",
            scope,
            job_id,
            eps_after,
            policy.epsilon,
        )
        return reservation

    def commit(
        self, reservation_id: str, *, steps_done: int, now: datetime | None = None
    ) -> LedgerEntry:
        """Records that ``steps_done`` (0..reserved steps) steps ran; fewer spend less.

        Idempotent: committing the same steps again is a no-op. A different count after a
        commit, or a commit after a release, is FailedPrecondition.
        """
        reservation_id = _name("reservation_id", reservation_id)
        steps_done = integer("steps_done", steps_done)
        at = _now(now)
        with self._transaction("IMMEDIATE") as conn:
            entry = self._get(conn, reservation_id)
            if not 0 <= steps_done <= entry.mechanism.steps:
                raise InvalidArgument(
                    f"steps_done: must be in [0, {entry.mechanism.steps}] (the reserved steps)"
                )
            if entry.status == "committed":
                if entry.steps_done != steps_done:
                    raise FailedPrecondition(
                        f"reservation '{reservation_id}' is already committed with"
                        f" {entry.steps_done} steps"
                    )
                return entry
            if entry.status == "released":
                raise FailedPrecondition(f"reservation '{reservation_id}' was released")
            conn.execute(
                "UPDATE charges SET status = 'committed', steps_done = ?, steps_charged = ?,"
                " settled_at_us = ? WHERE id = ?",
                (steps_done, steps_done, to_us(at), reservation_id),
            )
            return self._get(conn, reservation_id)

    def release(self, reservation_id: str, *, now: datetime | None = None) -> LedgerEntry:
        """Removes the charge of a reservation whose job never ran a step.

        The caller asserts that no step ran (e.g. the job was refused before touching the
        data). Idempotent; FailedPrecondition if steps were committed.
        """
        reservation_id = _name("reservation_id", reservation_id)
        at = _now(now)
        with self._transaction("IMMEDIATE") as conn:
            entry = self._get(conn, reservation_id)
            if entry.status == "released":
                return entry
            if entry.status == "committed" and entry.steps_done:
                raise FailedPrecondition(
                    f"reservation '{reservation_id}' committed {entry.steps_done} steps:"
                    " a spend that happened cannot be released"
                )
            conn.execute(
                "UPDATE charges SET status = 'released', steps_charged = 0, settled_at_us = ?"
                " WHERE id = ?",
                (to_us(at), reservation_id),
            )
            return self._get(conn, reservation_id)

    def report(self, scope: str, now: datetime | None = None) -> BudgetReport:
        """The scope's spend in the period containing ``now`` (default: the clock)."""
        policy = self.policy_for(scope)
        start, end = policy.period_bounds(_now(now))
        with self._transaction("DEFERRED") as conn:
            charged = self._charges(conn, scope, start, end)
        spent, used = compose(charged, delta=policy.delta, accountant=policy.accountant)
        return BudgetReport(
            scope=scope,
            epsilon_spent=spent,
            epsilon_budget=policy.epsilon,
            delta=policy.delta,
            epsilon_remaining=max(0.0, policy.epsilon - spent),
            period_start=start,
            period_end=end,
            mechanisms=len(charged),
            accountant=used,
        )

    def history(self, scope: str) -> list[LedgerEntry]:
        """Every mechanism ever charged to ``scope`` (any status), oldest first."""
        scope = _name("scope", scope, scope=True)
        with self._transaction("DEFERRED") as conn:
            rows = conn.execute(
                _SELECT + " WHERE scope = ? ORDER BY reserved_at_us, rowid",
                (scope,),
            ).fetchall()
        return [_entry(r) for r in rows]

    # ---- internals

    @staticmethod
    def _get(conn: sqlite3.Connection, reservation_id: str) -> LedgerEntry:
        row = conn.execute(_SELECT + " WHERE id = ?", (reservation_id,)).fetchone()
        if row is None:
            raise NotFound(f"reservation '{reservation_id}': not found")
        return _entry(row)

    @staticmethod
    def _charges(
        conn: sqlite3.Connection, scope: str, start: datetime, end: datetime
    ) -> list[Charge]:
        rows = conn.execute(
            "SELECT noise_multiplier, sample_rate, steps_charged, rdp, rdp_orders"
            " FROM charges WHERE scope = ? AND reserved_at_us >= ? AND reserved_at_us < ?"
            " AND steps_charged > 0 ORDER BY reserved_at_us, rowid",
            (scope, to_us(start), to_us(end)),
        ).fetchall()
        charges = []
        for noise, rate, steps, blob, digest in rows:
            curve = stored_rdp(bytes(blob), str(digest), float(noise), float(rate))
            charges.append(Charge(float(noise), float(rate), int(steps), curve))
        return charges
