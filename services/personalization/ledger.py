"""Persistent privacy ledger: a household's differential-privacy budget can never be overspent.

Every differentially private use of household data on the hub (a DP-SGD fine-tuning run, a
noised model delta sent upstream) is a *mechanism* charged to a *data scope* ("household",
"household/occupancy", ...). Per scope, a :class:`BudgetPolicy` allows ``epsilon`` at
``delta``; the ledger composes the mechanisms with an Opacus accountant (RDP or PRV) and
refuses one whose composition would exceed the budget.

**Whole-life accounting (a sliding window).** The budget bounds the composition of every
mechanism reserved in ANY window of ``period_days`` (the check at time ``t`` composes
everything reserved in ``[t - period_days, t]``). Examples are kept at most
``retention_days <= period_days`` (the service refuses another configuration) and pruned
with the ledger's own clock before every run (:mod:`.gating`), so every run that can read
an example lies in one such window: the guarantee holds for each example over its whole
life on the hub, not per calendar period.

**Time that cannot go back.** The ledger keeps the latest time it has seen
(``ledger_header.high_water_us``, in the same file and guarded by triggers). A change at a
time more than :data:`CLOCK_SLACK` before it is refused with FAILED_PRECONDITION naming
both times; within the slack the ledger time is the high-water mark. A forward jump moves
the mark: the old runs leave the window, but so does the data they read (pruned with the
same clock), so no retained example gets a fresh budget.

**Scopes** are independent: each one is meant to cover a disjoint part of the household's
data (parallel composition). A caller that trains on two scopes' data must charge both.

**Why reservations.** In ONE ``BEGIN IMMEDIATE`` transaction (SQLite's write lock) the
ledger composes every mechanism charged in the window (committed AND reserved) plus the
new one, and refuses (:class:`FailedPrecondition`, nothing written) or records it. The
job then commits the steps it ran or releases it if it never touched the data. A crashed
job stays charged at its full reserved steps.

**An audit trail.** With a ``recorder`` (the service always passes one), each reserve,
commit and release is appended to the audit log inside its transaction before it commits
(:mod:`.ledger_trail`); a change the audit log did not take is rolled back. The service
cross-checks the ledger against that trail (:mod:`.ledger_guard`) and can rebuild it
from it (:meth:`PrivacyLedger.rebuild`). Schema and triggers: :mod:`.ledger_schema`.

One SQLite connection per instance, guarded by a lock; WAL, ``synchronous=FULL``; 0600.
"""

from __future__ import annotations

import logging
import math
import re
import sqlite3
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from services.kit import sqlite as kit_sqlite
from services.kit.clock import from_us, to_us
from services.kit.errors import FailedPrecondition, InvalidArgument, NotFound
from services.personalization import ledger_schema as schema
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
from services.personalization.ledger_refusals import over_budget, unit_mismatch
from services.personalization.ledger_trail import Action, PrivacyRecord, Row, replay
from services.personalization.privacy_unit import UNITS

logger = logging.getLogger(__name__)

#: How far behind the high-water mark the clock may read (NTP slews) before it counts
#: as turned back; within it, the ledger time is the high-water mark.
CLOCK_SLACK: Final = timedelta(seconds=5)
_SCOPE_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)*")
_MAX_NAME_CHARS: Final = 200
_MAX_SCOPE_CHARS: Final = 64
#: A job id goes into every privacy record (ledger_trail bounds the record's size).
_JOB_ID_RE: Final = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
SCHEMA_VERSION: Final = schema.SCHEMA_VERSION
migrate = schema.migrate


class LedgerUnreadable(FailedPrecondition):
    """The ledger's file is not a ledger database (e.g. its header was overwritten)."""


Recorder = Callable[[PrivacyRecord], None]
"""Appends a record to the audit log, raising if it was not acknowledged."""


def _name(field: str, value: object, *, scope: bool = False) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"{field}: required (a non-empty string)")
    most = _MAX_SCOPE_CHARS if scope else _MAX_NAME_CHARS
    if len(value) > most:
        raise InvalidArgument(f"{field}: at most {most} characters")
    if field == "job_id" and not _JOB_ID_RE.fullmatch(value):
        raise InvalidArgument(f"{field}: at most 128 of letters, digits, '_', '.', ':', '-'")
    if scope and not _SCOPE_RE.fullmatch(value):
        raise InvalidArgument(
            f"{field}: must be '/'-separated names of letters, digits, '_', '.', '-'"
        )
    if not scope and not value.isprintable():
        raise InvalidArgument(f"{field}: must be printable")
    return value


class PrivacyLedger(kit_sqlite.SharedConnection):
    """The persistent per-scope privacy budget. Thread-safe; open one per process."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        policy: BudgetPolicy,
        scope_policies: Mapping[str, BudgetPolicy] | None = None,
        *,
        path: Path | None = None,
        recorder: Recorder | None = None,
    ) -> None:
        if not isinstance(policy, BudgetPolicy):
            raise InvalidArgument("policy: must be a BudgetPolicy")
        super().__init__(conn, what="privacy ledger")
        self._policy = policy
        self._path = path
        self._recorder = recorder
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
        recorder: Recorder | None = None,
    ) -> PrivacyLedger:
        """Opens (creating and migrating) the ledger at ``path`` (mode 0600).

        ``policy`` applies to every scope not in ``scope_policies`` (exact scope names).
        ``busy_timeout_s`` is how long an operation waits for another writer before
        ``Unavailable``. ``recorder`` appends each change to the audit log. A file that is
        not a ledger database (e.g. its header was overwritten) raises FailedPrecondition.
        """
        try:
            conn = schema.connect(path, busy_timeout_s)
        except sqlite3.DatabaseError as e:
            raise LedgerUnreadable(
                f"privacy ledger: {path.name} is not a readable ledger ({e}); rebuild it from"
                " the audit log: roost personalize ledger rebuild"
            ) from e
        return cls(conn, policy, scope_policies, path=path, recorder=recorder)

    def policy_for(self, scope: str) -> BudgetPolicy:
        return self._scope_policies.get(_name("scope", scope, scope=True), self._policy)

    # ---- the clock

    def check_time(self, now: datetime | None = None) -> datetime:
        """The ledger time for ``now`` (default: the clock), recorded as the latest seen.

        FailedPrecondition naming both times if ``now`` is before the latest time the
        ledger has seen (by more than CLOCK_SLACK).
        """
        with self._transaction("IMMEDIATE") as conn:
            return self._advance(conn, now)

    def latest_time(self, now: datetime | None = None) -> datetime:
        """``now`` (default: the clock), or the latest time the ledger has seen if that is
        later: a clock set back never makes data look younger than it is. Read only."""
        at = datetime.now(UTC) if now is None else aware_utc(now)
        with self._transaction("DEFERRED") as conn:
            return max(at, from_us(self._high_water(conn)))

    @staticmethod
    def _high_water(conn: sqlite3.Connection) -> int:
        row = conn.execute("SELECT high_water_us FROM ledger_header").fetchone()
        if row is None:
            raise FailedPrecondition(
                "privacy ledger: its header is missing (the file was edited); rebuild it from"
                " the audit log: roost personalize ledger rebuild"
            )
        return int(row[0])

    def _advance(self, conn: sqlite3.Connection, now: datetime | None) -> datetime:
        at = datetime.now(UTC) if now is None else aware_utc(now)
        seen = self._high_water(conn)
        if to_us(at) < seen - CLOCK_SLACK // timedelta(microseconds=1):
            raise FailedPrecondition(
                f"the clock went backwards: it reads {at.isoformat()} but the privacy"
                f" ledger has already seen {from_us(seen).isoformat()}; training is refused"
                " until the clock is set right (or passes that time)"
            )
        if to_us(at) > seen:
            conn.execute("UPDATE ledger_header SET high_water_us = ?", (to_us(at),))
            return at
        return from_us(seen)

    def _record(self, conn: sqlite3.Connection, action: Action, reservation_id: str) -> None:
        if self._recorder is not None:
            row = conn.execute(schema.SELECT + " WHERE id = ?", (reservation_id,)).fetchone()
            self._recorder(PrivacyRecord(action, tuple(row)))

    # ---- operations

    def reserve(
        self,
        scope: str,
        mechanism: Mechanism,
        *,
        job_id: str,
        privacy_unit: str,
        now: datetime | None = None,
    ) -> Reservation:
        """Charges ``mechanism`` (epsilon per ``privacy_unit``) to ``scope`` if the
        window's budget allows it.

        Raises FailedPrecondition (nothing recorded) if the composed epsilon would exceed
        the budget, the window holds charges in another privacy unit
        (:mod:`.ledger_refusals`) or the clock went back. Idempotent by ``job_id``: the
        same job, scope, mechanism and unit again returns the existing reservation;
        anything different is InvalidArgument.
        """
        policy = self.policy_for(scope)
        job_id = _name("job_id", job_id)
        if not isinstance(mechanism, Mechanism):
            raise InvalidArgument("mechanism: must be a Mechanism")
        if privacy_unit not in UNITS:
            raise InvalidArgument(f"privacy_unit: must be one of {', '.join(UNITS)}")
        rdp = unit_rdp(mechanism.noise_multiplier, mechanism.sample_rate)
        new = Charge(mechanism.noise_multiplier, mechanism.sample_rate, mechanism.steps, rdp)
        with self._transaction("IMMEDIATE") as conn:
            existing = conn.execute(schema.SELECT + " WHERE job_id = ?", (job_id,)).fetchone()
            if existing is not None:
                entry = schema.entry(existing)
                if (entry.scope, entry.mechanism, entry.privacy_unit) != (
                    scope,
                    mechanism,
                    privacy_unit,
                ):
                    raise InvalidArgument(
                        f"job_id: job '{job_id}' already holds a reservation with a"
                        " different scope, mechanism or privacy unit"
                    )
                return schema.reservation(entry)
            at = self._advance(conn, now)
            start = at - policy.window
            mixed = unit_mismatch(scope, policy, privacy_unit, self._units(conn, scope, start))
            if mixed is not None:
                raise mixed
            charged = self._charges(conn, scope, start)
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
                oldest = self._oldest(conn, scope, start)
                raise over_budget(scope, policy, (eps_before, eps_after), used, oldest)
            rid = uuid.uuid4().hex
            schema.insert(
                conn,
                (rid, job_id, scope, mechanism.kind, mechanism.noise_multiplier,
                 mechanism.sample_rate, mechanism.steps, "reserved", None, mechanism.steps,
                 to_us(at), None, to_us(start), to_us(at + policy.window), used,
                 policy.delta, policy.epsilon, eps_after, privacy_unit),
            )  # fmt: skip
            self._record(conn, "reserve", rid)
            reservation = schema.reservation(self._get(conn, rid))
        logger.info(
            "privacy budget reserved: scope=%s job=%s epsilon -> %.4f of %.4g per %s",
            scope,
            job_id,
            eps_after,
            policy.epsilon,
            privacy_unit,
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
            at = self._advance(conn, now)
            conn.execute(
                "UPDATE charges SET status = 'committed', steps_done = ?, steps_charged = ?,"
                " settled_at_us = ? WHERE id = ?",
                (steps_done, steps_done, to_us(at), reservation_id),
            )
            self._record(conn, "commit", reservation_id)
            return self._get(conn, reservation_id)

    def release(self, reservation_id: str, *, now: datetime | None = None) -> LedgerEntry:
        """Removes the charge of a reservation whose job never ran a step.

        The caller asserts that no step ran (e.g. the job was refused before touching the
        data). Idempotent; FailedPrecondition if steps were committed.
        """
        reservation_id = _name("reservation_id", reservation_id)
        with self._transaction("IMMEDIATE") as conn:
            entry = self._get(conn, reservation_id)
            if entry.status == "released":
                return entry
            if entry.status == "committed" and entry.steps_done:
                raise FailedPrecondition(
                    f"reservation '{reservation_id}' committed {entry.steps_done} steps:"
                    " a spend that happened cannot be released"
                )
            at = self._advance(conn, now)
            conn.execute(
                "UPDATE charges SET status = 'released', steps_charged = 0, settled_at_us = ?"
                " WHERE id = ?",
                (to_us(at), reservation_id),
            )
            self._record(conn, "release", reservation_id)
            return self._get(conn, reservation_id)

    def report(self, scope: str, now: datetime | None = None) -> BudgetReport:
        """The scope's spend in the window ending at ``now`` (default: the clock; never
        before the latest time the ledger has seen)."""
        policy = self.policy_for(scope)
        at = datetime.now(UTC) if now is None else aware_utc(now)
        with self._transaction("DEFERRED") as conn:
            at = max(at, from_us(self._high_water(conn)))
            start = at - policy.window
            charged = self._charges(conn, scope, start)
            oldest = self._oldest(conn, scope, start)
            units = self._units(conn, scope, start)
        spent, used = compose(charged, delta=policy.delta, accountant=policy.accountant)
        return BudgetReport(
            scope=scope,
            epsilon_spent=spent,
            epsilon_budget=policy.epsilon,
            delta=policy.delta,
            epsilon_remaining=max(0.0, policy.epsilon - spent),
            period_start=start,
            period_end=at,
            mechanisms=len(charged),
            accountant=used,
            frees_at=None if oldest is None else oldest + policy.window,
            units=tuple((u, last + policy.window) for u, last in units),
        )

    def history(self, scope: str) -> list[LedgerEntry]:
        """Every mechanism ever charged to ``scope`` (any status), oldest first."""
        scope = _name("scope", scope, scope=True)
        with self._transaction("DEFERRED") as conn:
            rows = conn.execute(
                schema.SELECT + " WHERE scope = ? ORDER BY reserved_at_us, rowid", (scope,)
            ).fetchall()
        return [schema.entry(r) for r in rows]

    # ---- the audit cross-check and the rebuild

    def rows(self) -> tuple[list[Row], int, list[str]]:
        """Every charge row (``ledger_schema.COLUMNS``), the high-water mark, and the ids
        whose stored privacy curve is not their mechanism's (an edited file)."""
        with self._transaction("DEFERRED") as conn:
            hwm = self._high_water(conn)
            stored = conn.execute(schema.SELECT_WITH_CURVES).fetchall()
        n = len(schema.COLUMNS)
        altered = [
            str(r[0])
            for r in stored
            # A curve tagged with other orders is recomputed, never used (accounting.stored_rdp).
            if r[n + 1] == ORDERS_DIGEST
            and bytes(r[n]) != unit_rdp(float(r[4]), float(r[5])).tobytes()
        ]
        return [tuple(r[:n]) for r in stored], hwm, altered

    def record_untrailed(self) -> int:
        """Appends the records of a ledger made before its changes were recorded (schema
        version 1) to the audit log, once; returns how many mechanisms (0 if none)."""
        with self._transaction("IMMEDIATE") as conn:
            (untrailed,) = conn.execute("SELECT untrailed FROM ledger_header").fetchone()
            if not untrailed or self._recorder is None:
                return 0
            rows = conn.execute(schema.SELECT + " ORDER BY rowid").fetchall()
            for row in rows:
                for record in replay(tuple(row)):
                    self._recorder(record)  # idempotent in the audit log (by decision id)
            conn.execute("UPDATE ledger_header SET untrailed = 0")
        return len(rows)

    def rebuild(self, rows: Sequence[Row], high_water_us: int) -> Path:
        """Replaces the ledger's file by one holding exactly ``rows`` (from the audit
        trail) and the high-water mark; the old file is kept beside it. Returns where."""
        if self._path is None:
            raise FailedPrecondition("privacy ledger: opened without a path; cannot rebuild")
        path = self._path
        fresh = path.with_name(path.name + ".rebuild")
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        kept = path.with_name(f"{path.name}.replaced-{stamp}")
        with self._lock:
            for old in (fresh, fresh.with_name(fresh.name + "-wal")):
                old.unlink(missing_ok=True)
            schema.write(fresh, rows, high_water_us)
            self.close()
            for suffix in ("", "-wal", "-shm"):
                side = path.with_name(path.name + suffix)
                if side.exists():
                    side.replace(kept.with_name(kept.name + suffix))
            fresh.replace(path)
            self._conn = schema.connect(path, 60.0)
        logger.warning("privacy ledger rebuilt from the audit log (%d mechanisms)", len(rows))
        return kept

    # ---- internals

    @staticmethod
    def _get(conn: sqlite3.Connection, reservation_id: str) -> LedgerEntry:
        row = conn.execute(schema.SELECT + " WHERE id = ?", (reservation_id,)).fetchone()
        if row is None:
            raise NotFound(f"reservation '{reservation_id}': not found")
        return schema.entry(row)

    @staticmethod
    def _oldest(conn: sqlite3.Connection, scope: str, start: datetime) -> datetime | None:
        """When the oldest mechanism that counts in the window from ``start`` was reserved."""
        us = conn.execute(
            "SELECT MIN(reserved_at_us) FROM charges WHERE scope = ? AND reserved_at_us >= ?"
            " AND steps_charged > 0",
            (scope, to_us(start)),
        ).fetchone()[0]
        return None if us is None else from_us(us)

    @staticmethod
    def _units(conn: sqlite3.Connection, scope: str, start: datetime) -> list[tuple[str, datetime]]:
        """Each privacy unit charged in the window from ``start``, with when its latest
        counted mechanism was reserved."""
        rows = conn.execute(
            "SELECT privacy_unit, MAX(reserved_at_us) FROM charges WHERE scope = ?"
            " AND reserved_at_us >= ? AND steps_charged > 0 GROUP BY privacy_unit"
            " ORDER BY privacy_unit",
            (scope, to_us(start)),
        ).fetchall()
        return [(unit, from_us(last)) for unit, last in rows]

    @staticmethod
    def _charges(conn: sqlite3.Connection, scope: str, start: datetime) -> list[Charge]:
        """What counts in the window from ``start`` (nothing is reserved after the
        high-water mark, so the window's end needs no bound)."""
        rows = conn.execute(
            "SELECT noise_multiplier, sample_rate, steps_charged, rdp, rdp_orders FROM charges"
            " WHERE scope = ? AND reserved_at_us >= ? AND steps_charged > 0"
            " ORDER BY reserved_at_us, rowid",
            (scope, to_us(start)),
        ).fetchall()
        charges = []
        for noise, rate, steps, blob, digest in rows:
            curve = stored_rdp(bytes(blob), str(digest), float(noise), float(rate))
            charges.append(Charge(float(noise), float(rate), int(steps), curve))
        return charges
