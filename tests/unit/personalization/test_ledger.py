"""Privacy ledger: the budget cannot be overspent (sequentially, across restarts, threads and
processes), reservations of crashed jobs count, commit/release adjust the spend, scopes and
periods are independent, and epsilon is exactly what Opacus computes for the history."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from opacus.accountants import PRVAccountant, RDPAccountant  # type: ignore[import-untyped]

from services.kit.errors import FailedPrecondition, InvalidArgument, NotFound
from services.personalization import accounting
from services.personalization.ledger import SCHEMA_VERSION, PrivacyLedger
from services.personalization.ledger_records import BudgetPolicy, Mechanism

DELTA = 1e-5
NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
SCOPE = "household/occupancy"
# One DP-SGD run; identical runs make "how many fit" independent of the race order.
RUN = Mechanism.dp_sgd(noise_multiplier=1.0, sample_rate=0.02, steps=100)


def opacus_rdp(history: list[tuple[float, float, int]], delta: float = DELTA) -> float:
    accountant = RDPAccountant()
    accountant.history = list(history)
    return float(accountant.get_epsilon(delta))


def runs(k: int, mech: Mechanism = RUN) -> list[tuple[float, float, int]]:
    return [(mech.noise_multiplier, mech.sample_rate, mech.steps)] * k


def budget_for(k: int) -> float:
    """A budget that exactly k RUNs fit in (k + 1 do not)."""
    return (opacus_rdp(runs(k)) + opacus_rdp(runs(k + 1))) / 2


def policy(epsilon: float, **kw: Any) -> BudgetPolicy:
    return BudgetPolicy(epsilon=epsilon, delta=DELTA, period_days=kw.pop("period_days", 30), **kw)


def charged_history(led: PrivacyLedger, scope: str = SCOPE) -> list[tuple[float, float, int]]:
    return [
        (e.mechanism.noise_multiplier, e.mechanism.sample_rate, e.steps_charged)
        for e in led.history(scope)
        if e.steps_charged > 0
    ]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "ledger" / "privacy.db"


def test_schema_is_versioned_and_append_only(db: Path) -> None:
    with PrivacyLedger.open(db, policy(10.0)) as led:
        led.reserve(SCOPE, RUN, job_id="a", privacy_unit="day", now=NOW)
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("DELETE FROM charges")
        with pytest.raises(sqlite3.DatabaseError, match="rewritten"):
            conn.execute("UPDATE charges SET steps = 1")
    finally:
        conn.close()


def test_sequential_overspend_is_refused_with_the_numbers(db: Path) -> None:
    budget = budget_for(3)
    with PrivacyLedger.open(db, policy(budget)) as led:
        reservations = [
            led.reserve(SCOPE, RUN, job_id=f"job-{i}", privacy_unit="day", now=NOW)
            for i in range(3)
        ]
        assert [r.epsilon_after for r in reservations] == pytest.approx(
            [opacus_rdp(runs(k)) for k in (1, 2, 3)], rel=1e-9
        )
        with pytest.raises(FailedPrecondition) as exc:
            led.reserve(SCOPE, RUN, job_id="job-3", privacy_unit="day", now=NOW)
        assert exc.value.code == grpc.StatusCode.FAILED_PRECONDITION
        msg = str(exc.value)
        spent, after = opacus_rdp(runs(3)), opacus_rdp(runs(4))
        assert SCOPE in msg
        assert f"{spent:.4f}" in msg  # already spent
        assert f"{after - spent:.4f}" in msg  # this run would add
        assert f"{after:.4f}" in msg  # cumulative
        assert f"{budget:g}" in msg
        assert "delta 1e-05" in msg
        reset = reservations[0].period_end
        assert reset.isoformat() in msg
        assert "noise_multiplier" in msg
        assert "steps" in msg
        # Refused means nothing was recorded.
        report = led.report(SCOPE, now=NOW)
        assert report.mechanisms == 3
        assert report.epsilon_spent == pytest.approx(spent, rel=1e-9)
        assert report.epsilon_spent <= budget
        assert report.epsilon_remaining == pytest.approx(budget - spent)
        assert len(led.history(SCOPE)) == 3
        # A cheaper run still fits.
        small = Mechanism.dp_sgd(noise_multiplier=3.0, sample_rate=0.001, steps=10)
        led.reserve(SCOPE, small, job_id="small", privacy_unit="day", now=NOW)


def test_budget_survives_a_restart(db: Path) -> None:
    budget = budget_for(2)
    with PrivacyLedger.open(db, policy(budget)) as led:
        led.reserve(SCOPE, RUN, job_id="a", privacy_unit="day", now=NOW)
        led.commit(
            led.reserve(SCOPE, RUN, job_id="b", privacy_unit="day", now=NOW).id,
            steps_done=RUN.steps,
            now=NOW,
        )
    with PrivacyLedger.open(db, policy(budget)) as led:
        report = led.report(SCOPE, now=NOW)
        assert report.mechanisms == 2
        assert report.epsilon_spent == pytest.approx(opacus_rdp(runs(2)), rel=1e-9)
        with pytest.raises(FailedPrecondition, match="exceeded"):
            led.reserve(SCOPE, RUN, job_id="c", privacy_unit="day", now=NOW + timedelta(hours=1))


def test_crashed_job_reservation_still_counts(db: Path) -> None:
    budget = budget_for(1)
    led = PrivacyLedger.open(db, policy(budget))
    led.reserve(SCOPE, RUN, job_id="crashes", privacy_unit="day", now=NOW)
    # The job dies: no commit, no release, not even a close.
    del led
    with PrivacyLedger.open(db, policy(budget)) as led2:
        (entry,) = led2.history(SCOPE)
        assert entry.status == "reserved"
        assert entry.steps_charged == RUN.steps
        with pytest.raises(FailedPrecondition):
            led2.reserve(SCOPE, RUN, job_id="next", privacy_unit="day", now=NOW)
        # Idempotent retry of the crashed job returns its reservation.
        again = led2.reserve(
            SCOPE, RUN, job_id="crashes", privacy_unit="day", now=NOW + timedelta(days=1)
        )
        assert again.id == entry.id


def test_release_frees_and_fewer_committed_steps_spend_less(db: Path) -> None:
    with PrivacyLedger.open(db, policy(budget_for(1))) as led:
        a = led.reserve(SCOPE, RUN, job_id="a", privacy_unit="day", now=NOW)
        with pytest.raises(FailedPrecondition):
            led.reserve(SCOPE, RUN, job_id="b", privacy_unit="day", now=NOW)
        # The job was refused before touching data: release frees the budget.
        released = led.release(a.id, now=NOW)
        assert released.status == "released"
        assert released.steps_charged == 0
        assert led.release(a.id, now=NOW) == released  # idempotent
        assert led.report(SCOPE, now=NOW).epsilon_spent == 0.0
        with pytest.raises(FailedPrecondition, match="released"):
            led.commit(a.id, steps_done=1, now=NOW)

        b = led.reserve(SCOPE, RUN, job_id="b", privacy_unit="day", now=NOW)
        committed = led.commit(b.id, steps_done=40, now=NOW)
        assert committed.status == "committed"
        assert committed.steps_done == 40
        assert committed.settled_at is not None
        assert led.commit(b.id, steps_done=40, now=NOW) == committed  # idempotent
        with pytest.raises(FailedPrecondition, match="already committed"):
            led.commit(b.id, steps_done=50, now=NOW)
        with pytest.raises(FailedPrecondition, match="cannot be released"):
            led.release(b.id, now=NOW)
        report = led.report(SCOPE, now=NOW)
        assert report.epsilon_spent == pytest.approx(opacus_rdp([(1.0, 0.02, 40)]), rel=1e-9)
        assert report.epsilon_spent < b.epsilon_after

        # A job that committed zero steps may still be released.
        c = led.reserve(
            SCOPE,
            Mechanism.gaussian(noise_multiplier=50.0),
            job_id="c",
            privacy_unit="day",
            now=NOW,
        )
        led.commit(c.id, steps_done=0, now=NOW)
        assert led.release(c.id, now=NOW).status == "released"

        with pytest.raises(InvalidArgument, match="steps_done"):
            led.commit(b.id, steps_done=RUN.steps + 1, now=NOW)
        with pytest.raises(InvalidArgument, match="steps_done"):
            led.commit(b.id, steps_done=-1, now=NOW)
        statuses = [(e.job_id, e.status) for e in led.history(SCOPE)]
        assert statuses == [("a", "released"), ("b", "committed"), ("c", "released")]


def test_threads_race_and_never_overspend(db: Path) -> None:
    budget = budget_for(3)
    n = 8
    barrier = threading.Barrier(n)
    outcomes: list[str] = []
    lock = threading.Lock()
    with PrivacyLedger.open(db, policy(budget)) as led:

        def worker(i: int) -> None:
            barrier.wait(timeout=10)
            try:
                led.reserve(SCOPE, RUN, job_id=f"t{i}", privacy_unit="day", now=NOW)
                result = "ok"
            except FailedPrecondition:
                result = "refused"
            with lock:
                outcomes.append(result)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert sorted(outcomes) == ["ok"] * 3 + ["refused"] * 5
        assert opacus_rdp(charged_history(led)) <= budget


def _race_worker(path: str, budget: float, worker: int, n: int, barrier: Any) -> None:
    """Runs in a spawned process: reserve n runs, then 'crash' without commit or close."""
    try:
        led = PrivacyLedger.open(Path(path), policy(budget))
        barrier.wait(timeout=120)
        for k in range(n):
            with contextlib.suppress(FailedPrecondition):
                led.reserve(SCOPE, RUN, job_id=f"p{worker}-{k}", privacy_unit="day", now=NOW)
    except BaseException:
        os._exit(3)
    os._exit(0)


def test_processes_race_and_never_overspend(db: Path) -> None:
    budget = budget_for(5)
    PrivacyLedger.open(db, policy(budget)).close()
    ctx = multiprocessing.get_context("spawn")
    workers, per_worker = 4, 3
    barrier = ctx.Barrier(workers)
    procs = [
        ctx.Process(target=_race_worker, args=(str(db), budget, w, per_worker, barrier))
        for w in range(workers)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * workers
    with PrivacyLedger.open(db, policy(budget)) as led:
        entries = led.history(SCOPE)
        # 12 requests raced: exactly 5 fit, the other 7 were refused (and not recorded).
        assert len(entries) == 5
        assert all(e.status == "reserved" for e in entries)  # the workers "crashed"
        assert opacus_rdp(charged_history(led)) <= budget
        assert led.report(SCOPE, now=NOW).epsilon_spent <= budget


def test_scopes_are_independent(db: Path) -> None:
    comfort = "household/comfort"
    scope_policies = {comfort: policy(budget_for(2))}
    with PrivacyLedger.open(db, policy(budget_for(1)), scope_policies=scope_policies) as led:
        led.reserve(SCOPE, RUN, job_id="o1", privacy_unit="day", now=NOW)
        with pytest.raises(FailedPrecondition):
            led.reserve(SCOPE, RUN, job_id="o2", privacy_unit="day", now=NOW)
        led.reserve(comfort, RUN, job_id="c1", privacy_unit="day", now=NOW)
        led.reserve(comfort, RUN, job_id="c2", privacy_unit="day", now=NOW)
        assert led.report(comfort, now=NOW).mechanisms == 2
        assert led.report(SCOPE, now=NOW).mechanisms == 1
        assert led.report("household", now=NOW).epsilon_spent == 0.0
        assert [e.job_id for e in led.history(comfort)] == ["c1", "c2"]


def test_the_window_slides_with_the_ledger_clock(db: Path) -> None:
    budget = budget_for(1)
    with PrivacyLedger.open(db, policy(budget, period_days=7)) as led:
        r = led.reserve(SCOPE, RUN, job_id="w1", privacy_unit="day", now=NOW)
        assert (r.period_start, r.period_end) == (NOW - timedelta(days=7), NOW + timedelta(days=7))
        # No calendar boundary resets it: refused until the run is 7 days old.
        with pytest.raises(FailedPrecondition, match="leaves the window at"):
            led.reserve(
                SCOPE,
                RUN,
                job_id="w2",
                privacy_unit="day",
                now=r.period_end - timedelta(microseconds=1),
            )
        later = led.report(SCOPE, now=NOW + timedelta(days=6))
        assert (later.mechanisms, later.frees_at) == (1, r.period_end)
        nxt = led.report(SCOPE, now=r.period_end + timedelta(microseconds=1))
        assert (nxt.epsilon_spent, nxt.mechanisms, nxt.frees_at) == (0.0, 0, None)
        r2 = led.reserve(
            SCOPE,
            RUN,
            job_id="w2",
            privacy_unit="day",
            now=r.period_end + timedelta(microseconds=1),
        )
        assert r2.epsilon_after == pytest.approx(r.epsilon_after)
        assert len(led.history(SCOPE)) == 2


def test_epsilon_matches_a_direct_opacus_computation(db: Path) -> None:
    mechs = [
        RUN,
        Mechanism.dp_sgd(noise_multiplier=0.9, sample_rate=0.005, steps=400),
        Mechanism.gaussian(noise_multiplier=6.0),
        RUN,
        Mechanism.dp_sgd(noise_multiplier=1.3, sample_rate=1.0, steps=3),
    ]
    with PrivacyLedger.open(db, policy(100.0)) as led:
        for i, m in enumerate(mechs):
            led.reserve(
                SCOPE, m, job_id=f"m{i}", privacy_unit="day", now=NOW + timedelta(seconds=i)
            )
        history = [(m.noise_multiplier, m.sample_rate, m.steps) for m in mechs]
        assert led.report(SCOPE, now=NOW).epsilon_spent == pytest.approx(
            opacus_rdp(history), rel=1e-9
        )
        entries = led.history(SCOPE)
        assert [e.epsilon_after for e in entries] == pytest.approx(
            [opacus_rdp(history[: k + 1]) for k in range(len(mechs))], rel=1e-9
        )
        assert entries[2].mechanism == Mechanism("gaussian", 6.0, 1.0, 1)


def test_prv_accountant_matches_opacus(db: Path) -> None:
    with PrivacyLedger.open(db, policy(100.0, accountant="prv")) as led:
        led.reserve(SCOPE, RUN, job_id="a", privacy_unit="day", now=NOW)
        led.reserve(SCOPE, RUN, job_id="b", privacy_unit="day", now=NOW)
        r = led.reserve(
            SCOPE, Mechanism.gaussian(noise_multiplier=4.0), job_id="g", privacy_unit="day", now=NOW
        )
        report = led.report(SCOPE, now=NOW)
    direct = PRVAccountant()
    direct.history = [(1.0, 0.02, 200), (4.0, 1.0, 1)]  # Opacus merges identical steps
    expected = float(direct.get_epsilon(DELTA))
    assert report.accountant == "prv"
    assert report.epsilon_spent == pytest.approx(expected, rel=1e-9)
    assert r.epsilon_after == pytest.approx(expected, rel=1e-9)
    # PRV is tighter than the RDP bound of the same history.
    assert expected < opacus_rdp([*runs(2), (4.0, 1.0, 1)])


class _NoPrv:
    """Stands in for Opacus' PRVAccountant where running it would be a bug."""

    def get_epsilon(self, delta: float) -> float:
        raise AssertionError("the PRV accountant ran")


def test_extreme_parameters_are_refused_by_the_rdp_bound_without_prv(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PRV would want terabytes here; the ledger uses the RDP bound and refuses.
    monkeypatch.setattr(accounting, "PRVAccountant", _NoPrv)
    tiny_noise = Mechanism.dp_sgd(noise_multiplier=1e-4, sample_rate=0.5, steps=10)
    with PrivacyLedger.open(db, policy(10.0, accountant="prv")) as led:
        with pytest.raises(FailedPrecondition, match="rdp accountant"):
            led.reserve(SCOPE, tiny_noise, job_id="x", privacy_unit="day", now=NOW)
        assert led.history(SCOPE) == []


def test_idempotent_by_job_id(db: Path) -> None:
    with PrivacyLedger.open(db, policy(10.0)) as led:
        r = led.reserve(SCOPE, RUN, job_id="job", privacy_unit="day", now=NOW)
        assert (
            led.reserve(
                SCOPE, RUN, job_id="job", privacy_unit="day", now=NOW + timedelta(minutes=5)
            )
            == r
        )
        other = Mechanism.dp_sgd(noise_multiplier=1.0, sample_rate=0.02, steps=99)
        with pytest.raises(InvalidArgument, match="job_id"):
            led.reserve(SCOPE, other, job_id="job", privacy_unit="day", now=NOW)
        with pytest.raises(InvalidArgument, match="job_id"):
            led.reserve("household", RUN, job_id="job", privacy_unit="day", now=NOW)
        assert len(led.history(SCOPE)) == 1


def test_invalid_arguments_and_unknown_ids(db: Path) -> None:
    with PrivacyLedger.open(db, policy(10.0)) as led:
        with pytest.raises(NotFound) as exc:
            led.commit("0" * 32, steps_done=1)
        assert exc.value.code == grpc.StatusCode.NOT_FOUND
        with pytest.raises(NotFound):
            led.release("nope")
        with pytest.raises(InvalidArgument, match="reservation_id"):
            led.release("")
        with pytest.raises(InvalidArgument, match="steps_done"):
            led.commit("x", steps_done=True)
        for scope in ("", "/household", "household//x", "house hold", "a" * 201):
            with pytest.raises(InvalidArgument, match="scope"):
                led.reserve(scope, RUN, job_id="j", privacy_unit="day", now=NOW)
        with pytest.raises(InvalidArgument, match="job_id"):
            led.reserve(SCOPE, RUN, job_id="", privacy_unit="day", now=NOW)
        with pytest.raises(InvalidArgument, match="now"):
            led.reserve(SCOPE, RUN, job_id="j", privacy_unit="day", now=datetime(2026, 3, 10))
        with pytest.raises(InvalidArgument, match="mechanism"):
            led.reserve(SCOPE, (1.0, 0.02, 100), job_id="j", privacy_unit="day", now=NOW)  # type: ignore[arg-type]
        assert led.history(SCOPE) == []


def test_100_mechanisms_compose_from_their_stored_curves(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Composing is a vector sum of the curves in the DB: no RDP series is evaluated
    again, even in a fresh process (how long that takes is measured by ``make bench``)."""
    # 100 mechanisms from 10 (noise, rate) configurations, all with different steps.
    configs = [(0.8 + 0.12 * c, 0.001 + 0.004 * c) for c in range(10)]
    mechs = [
        Mechanism.dp_sgd(noise_multiplier=noise, sample_rate=rate, steps=10 + 5 * i)
        for i, (noise, rate) in enumerate(configs * 10)
    ]
    with PrivacyLedger.open(db, policy(1e6)) as led:
        for i, m in enumerate(mechs):
            led.reserve(SCOPE, m, job_id=f"m{i}", privacy_unit="day", now=NOW)
    merged: dict[tuple[float, float], int] = {}
    for m in mechs:
        key = (m.noise_multiplier, m.sample_rate)
        merged[key] = merged.get(key, 0) + m.steps
    direct = opacus_rdp([(noise, rate, n) for (noise, rate), n in merged.items()])
    # As in a fresh process: nothing memoized, only what the DB holds.
    accounting._unit_rdp_cached.cache_clear()
    computed: list[tuple[float, float]] = []
    compute_rdp = accounting.rdp_analysis.compute_rdp

    def counting(*, q: float, noise_multiplier: float, steps: int, orders: Any) -> Any:
        computed.append((noise_multiplier, q))
        return compute_rdp(q=q, noise_multiplier=noise_multiplier, steps=steps, orders=orders)

    monkeypatch.setattr(accounting.rdp_analysis, "compute_rdp", counting)
    with PrivacyLedger.open(db, policy(1e6)) as led:
        report = led.report(SCOPE, now=NOW)
        assert report.mechanisms == 100
        assert computed == []
        assert report.epsilon_spent == pytest.approx(direct, rel=1e-9)
        # A new mechanism's curve is computed once, the 100 stored ones are not.
        led.reserve(SCOPE, RUN, job_id="101", privacy_unit="day", now=NOW)
        assert computed == [(RUN.noise_multiplier, RUN.sample_rate)]
