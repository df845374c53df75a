"""Whole-life accounting and a clock that cannot go back, tried as an attacker would.

Window stacking: a run whenever the budget allows, day after day for 120 days, with
retention enforced by the same clock before each one: no example is ever exposed to
runs whose composition exceeds the budget. The clock set 31 days back, 400 days back
and 31 days forward: refused (naming both times) or no fresh budget for retained data.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from services.kit.errors import FailedPrecondition
from services.personalization.__main__ import run_retention
from services.personalization.accounting import Charge, compose, unit_rdp
from services.personalization.config import PersonalizationConfig
from services.personalization.gating import enforce_retention
from services.personalization.ledger import PrivacyLedger
from services.personalization.ledger_records import BudgetPolicy, Mechanism
from services.personalization.store import ExampleStore, NewExample

DAY = timedelta(days=1)
T0 = datetime(2026, 3, 1, tzinfo=UTC)
BUDGET = BudgetPolicy(epsilon=4.0, delta=1e-5, period_days=30, accountant="rdp")
RETENTION = timedelta(days=30)
# Two runs fit in a window, a third does not.
RUN = Mechanism.dp_sgd(noise_multiplier=1.0, sample_rate=0.01, steps=1500)


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[tuple[PrivacyLedger, ExampleStore]]:
    with (
        PrivacyLedger.open(tmp_path / "ledger.db", BUDGET) as ledger,
        ExampleStore.open(tmp_path / "examples.db") as store,
    ):
        yield ledger, store


def add_day(store: ExampleStore, day: datetime, n: int = 3) -> None:
    rows = [
        NewExample(np.array([day.timestamp(), i], dtype=np.float32), "occupied", "sensor", day)
        for i in range(n)
    ]
    store.add("occupancy", rows, now=day)


def stored_ids(store: ExampleStore) -> set[float]:
    x, _ = store.load("occupancy", ["occupied", "vacant"], [2])
    return {float(v) for v in x[:, 0]}


def epsilon_of(runs: list[Mechanism]) -> float:
    charges = [
        Charge(
            m.noise_multiplier, m.sample_rate, m.steps, unit_rdp(m.noise_multiplier, m.sample_rate)
        )
        for m in runs
    ]
    return compose(charges, delta=BUDGET.delta, accountant="rdp")[0]


def test_two_runs_fit_the_budget_three_do_not() -> None:
    assert epsilon_of([RUN, RUN]) <= BUDGET.epsilon < epsilon_of([RUN, RUN, RUN])


def test_window_stacking_never_exposes_an_example_beyond_the_budget(
    parts: tuple[PrivacyLedger, ExampleStore],
) -> None:
    """New data every day, a run every day the budget allows, for 120 days: the runs each
    example was read by compose to at most the budget (at the base, 90-day retention
    and fixed 30-day periods let the same rows be read in four periods)."""
    ledger, store = parts
    exposure: dict[float, list[Mechanism]] = {}
    refusals: list[str] = []
    runs = 0
    for d in range(120):
        now = T0 + d * DAY
        add_day(store, now)
        at = enforce_retention(ledger, store, RETENTION, now)
        try:
            ledger.reserve("household", RUN, job_id=f"day-{d}", privacy_unit="day", now=at)
        except FailedPrecondition as e:
            refusals.append(str(e))
            continue
        runs += 1
        for example in stored_ids(store):
            exposure.setdefault(example, []).append(RUN)
    assert runs >= 6  # the attack did run, in every window it could
    assert all("privacy budget exceeded" in r for r in refusals)
    worst = max(epsilon_of(m) for m in exposure.values())
    assert worst <= BUDGET.epsilon


@pytest.mark.parametrize("back", [timedelta(days=31), timedelta(days=400)])
def test_a_clock_set_back_is_refused_naming_both_times(
    parts: tuple[PrivacyLedger, ExampleStore], back: timedelta
) -> None:
    ledger, store = parts
    add_day(store, T0)
    at = enforce_retention(ledger, store, RETENTION, T0)
    ledger.reserve("household", RUN, job_id="first", privacy_unit="day", now=at)
    ledger.reserve("household", RUN, job_id="second", privacy_unit="day", now=at + DAY)
    future = T0 + 2 * DAY  # data stamped after the wrong clock's "now"
    add_day(store, future)
    before = store.count("occupancy")
    wrong = T0 + 2 * DAY - back
    with pytest.raises(FailedPrecondition) as e:
        enforce_retention(ledger, store, RETENTION, wrong)
    assert wrong.isoformat() in str(e.value)
    assert (T0 + DAY).isoformat() in str(e.value)
    assert "clock went backwards" in str(e.value)
    with pytest.raises(FailedPrecondition, match="clock went backwards"):
        ledger.reserve("household", RUN, job_id="fresh", privacy_unit="day", now=wrong)
    assert store.count("occupancy") == before  # nothing pruned either
    assert [e.job_id for e in ledger.history("household")] == ["first", "second"]
    # Once the clock is right again, the window still holds both runs.
    with pytest.raises(FailedPrecondition, match="privacy budget exceeded"):
        ledger.reserve("household", RUN, job_id="third", privacy_unit="day", now=T0 + 2 * DAY)


def test_a_clock_jumped_forward_gives_no_fresh_budget_for_retained_data(
    parts: tuple[PrivacyLedger, ExampleStore],
) -> None:
    ledger, store = parts
    add_day(store, T0)
    at = enforce_retention(ledger, store, RETENTION, T0)
    ledger.reserve("household", RUN, job_id="a", privacy_unit="day", now=at)
    ledger.reserve("household", RUN, job_id="b", privacy_unit="day", now=at)
    trained_on = stored_ids(store)
    jumped = T0 + timedelta(days=31)
    at = enforce_retention(ledger, store, RETENTION, jumped)
    # The window moved past both runs, and the data they read is gone with it.
    assert at == jumped
    assert not stored_ids(store) & trained_on
    assert store.count("occupancy") == 0
    # Back to the real time: the ledger has seen the jump, so that is a clock going back.
    with pytest.raises(FailedPrecondition, match="clock went backwards"):
        enforce_retention(ledger, store, RETENTION, T0 + DAY)


def test_a_small_step_back_is_within_the_slack(parts: tuple[PrivacyLedger, ExampleStore]) -> None:
    ledger, store = parts
    first = enforce_retention(ledger, store, RETENTION, T0)
    assert enforce_retention(ledger, store, RETENTION, T0 - timedelta(seconds=1)) == first


def test_retention_longer_than_the_window_is_refused() -> None:
    with pytest.raises(ValueError, match="retention_days: must be <= period_days"):
        PersonalizationConfig(retention_days=90, period_days=30)
    assert PersonalizationConfig().retention_days <= PersonalizationConfig().period_days


async def test_the_background_retention_pass_keeps_the_ledgers_time(
    parts: tuple[PrivacyLedger, ExampleStore],
) -> None:
    """The hourly pass prunes by the ledger's time too: with the clock set 40 days back
    after the ledger saw today, an example 15 days old by the clock (55 by the ledger)
    is gone, not kept for 40 more days."""
    ledger, store = parts
    now = datetime.now(UTC)
    ledger.check_time(now + 40 * DAY)  # the ledger saw a later time; the clock is back
    add_day(store, now - 15 * DAY)
    add_day(store, now + 20 * DAY)
    assert len(stored_ids(store)) == 2
    manager = SimpleNamespace(busy=False)
    task = asyncio.create_task(run_retention(store, manager, ledger, 30, 3600))  # type: ignore[arg-type]
    try:
        for _ in range(200):
            if len(stored_ids(store)) == 1:
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
    (kept,) = stored_ids(store)  # float32 ids: compare to within their precision
    assert kept == pytest.approx((now + 20 * DAY).timestamp(), abs=256)
