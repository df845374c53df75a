"""The chaos suite's bookkeeping: losses, time to decide again and the invariants of one
outage, from a ledger built by hand (no stack)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bench.chaos_ledger import (
    Ledger,
    Logged,
    Outage,
    Seen,
    aggregate,
    longest_gap,
    lost_entries,
    owed_decisions,
    summarize,
    unaudited,
)


def ledger_of(n: int, decided: dict[int, float], *, acked: set[int] | None = None) -> Ledger:
    """Readings 0..n-1 offered at t = seq seconds; ``decided``: seq -> arrival time."""
    ledger = Ledger()
    for seq in range(n):
        ledger.offered(float(seq))
    ledger.acked = set(range(n)) if acked is None else acked
    for seq, arrived in decided.items():
        ledger.record(f"chaos-{seq}", Seen(f"d{seq}", seq, "occupancy", arrived))
    return ledger


def log_of(ledger: Ledger) -> dict[str, Logged]:
    return {d.decision_id: Logged(d.audit_index, 0.0) for d in ledger.all_seen()}


def outage(**kw: float) -> Outage:
    o = Outage("inference", "short", 2.0, first_seq=0, end_seq=10, killed_at=3.0, ready_at=6.0)
    for k, v in kw.items():
        setattr(o, k, v)
    return o


def test_lost_readings_are_split_by_when_they_were_published() -> None:
    # 3 and 4 published while down, 7 after the restart, none of them decided.
    ledger = ledger_of(10, {s: s + 0.01 for s in (0, 1, 2, 5, 6, 8, 9)})
    row = summarize(outage(), ledger, log_of(ledger), set())
    assert (row["published"], row["lost"]) == (10, 3)
    assert (row["lost_while_down"], row["lost_after_ready"]) == (2, 1)
    # The first decision of a reading published at or after the restart (seq 6) came 0.01 s
    # after it was sent, i.e. 0.01 s after ready.
    assert abs(row["resume_s"] - 0.01) < 1e-9


def test_readings_the_broker_never_acknowledged_are_not_counted_lost() -> None:
    ledger = ledger_of(10, {s: s + 0.5 for s in (0, 1, 2, 6, 7, 8, 9)}, acked={0, 1, 2, 6, 7, 8, 9})
    row = summarize(outage(), ledger, log_of(ledger), set())
    assert (row["published"], row["not_published"], row["lost"]) == (7, 3, 0)


def test_longest_pauses_of_readings_and_decisions() -> None:
    ledger = ledger_of(10, {0: 0.1, 1: 1.1, 2: 2.1, 8: 8.5, 9: 9.1})
    row = summarize(outage(), ledger, log_of(ledger), set())
    assert row["publish_gap_s"] == 1.0
    assert abs(row["decision_gap_s"] - 6.4) < 1e-9
    assert longest_gap([]) == longest_gap([1.0]) == 0.0


def test_no_decision_after_the_restart_is_never() -> None:
    ledger = ledger_of(10, {0: 0.1, 1: 1.1, 2: 2.1})
    row = summarize(outage(), ledger, log_of(ledger), set())
    assert row["resume_s"] is None
    assert aggregate([row])[0]["resume_s"] is None


def test_a_decision_missing_from_the_log_or_at_another_index_is_unaudited() -> None:
    ledger = ledger_of(10, {s: s + 0.1 for s in range(10)})
    log = log_of(ledger)
    del log["d3"]
    log["d4"] = Logged(99, 0.0)
    assert sorted(unaudited(ledger.all_seen(), log)) == ["d3", "d4"]
    assert summarize(outage(), ledger, log, set())["unaudited"] == 2


def test_acknowledged_entries_must_stay_at_their_index() -> None:
    log = {"a": Logged(0, 0.0), "b": Logged(5, 0.0)}
    assert lost_entries({"a": 0, "b": 1, "c": 2}, log) == ["b", "c"]


def test_duplicates_and_decisions_of_other_publishers() -> None:
    ledger = ledger_of(10, {s: s + 0.1 for s in range(10)})
    ledger.record("chaos-5", Seen("again", 50, "occupancy", 5.2))  # a second one, same model
    ledger.record("chaos-5", Seen("other", 51, "comfort", 5.3))  # another model: not a dup
    ledger.record("chaos-6", Seen("d6", 6, "occupancy", 6.2))  # the same one again (QoS 1)
    ledger.record("sensor-7", Seen("x", 52, "occupancy", 5.4))  # not ours: ignored
    ledger.record("chaos-x", Seen("y", 53, "occupancy", 5.5))
    row = summarize(outage(), ledger, log_of(ledger), set())
    assert (row["duplicates"], row["redelivered"]) == (1, 1)
    assert ledger.malformed == 1
    assert ledger.received == 13


def test_recorded_decisions_never_received_are_counted_in_their_window() -> None:
    ledger = ledger_of(10, {})
    log = {"late": Logged(0, 105.0), "before": Logged(1, 99.0), "seen": Logged(2, 101.0)}
    row = summarize(outage(wall_start=100.0, wall_end=110.0), ledger, log, {"seen"})
    assert row["recorded_not_received"] == 1


def test_aggregate_takes_medians_of_repeats_and_sums_of_invariants() -> None:
    base = {"process": "hub", "kind": "short", "down_s": 2.0, "published": 100}
    rows = [
        {
            **base,
            "not_published": 0,
            "lost": lost,
            "resume_s": again,
            "unaudited": bad,
            "acked_lost": 0,
            "duplicates": 0,
            "redelivered": 0,
            "recorded_not_received": 1,
        }
        for lost, again, bad in ((10, 0.5, 0), (30, 0.1, 1), (20, 0.3, 0))
    ]
    (agg,) = aggregate(rows)
    assert (agg["runs"], agg["lost"], agg["resume_s"]) == (3, 20, 0.3)
    assert (agg["unaudited"], agg["recorded_not_received"]) == (1, 3)


@given(
    st.integers(min_value=1, max_value=60).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.sets(st.integers(0, n - 1)),
            st.sets(st.integers(0, n - 1)),
            st.integers(0, n - 1),
        )
    )
)
def test_every_offered_reading_is_counted_once(case: tuple[int, set[int], set[int], int]) -> None:
    n, acked, decided, kill = case
    ledger = ledger_of(n, {s: s + 0.1 for s in decided}, acked=acked)
    o = outage(end_seq=n, killed_at=float(kill), ready_at=float(kill) + 1.5)
    row = summarize(o, ledger, log_of(ledger), set())
    assert row["published"] + row["not_published"] == n
    assert row["lost"] == len(acked - decided)
    assert row["lost_while_down"] + row["lost_after_ready"] <= row["lost"]
    assert row["unaudited"] == 0


KINDS = ("temperature", "humidity", "light", "co2")


def _reading(seq: int) -> tuple[str, str, float]:
    """One area, a row of the four kinds per minute (the chaos load's stream)."""
    return "a", KINDS[seq % 4], 60.0 * (seq // 4)


def test_after_a_gap_only_readings_that_complete_a_window_are_owed_a_decision() -> None:
    # Rows 0-1 published; rows 2-29 lost to a broker outage (30 minutes > 15 stale);
    # row 30 published but its first kind not; row 31 whole.
    acked = set(range(8)) | set(range(121, 128))
    ledger = ledger_of(128, dict.fromkeys(acked, 0.0), acked=acked)
    owed = owed_decisions(ledger, _reading, frozenset(KINDS), 900.0)
    # Row 0 completes at its 4th kind; row 30 misses its temperature (the one before the
    # gap is 29 minutes old); from row 31 on every reading completes the window.
    expected = {3, 4, 5, 6, 7, 124, 125, 126, 127}
    assert owed == expected
    undecided = acked - expected
    for s in undecided:
        del ledger.decisions[s]
    row = summarize(outage(end_seq=128), ledger, log_of(ledger), set(), owed)
    assert row["lost"] == 0
    assert row["undecided_incomplete"] == len(undecided)
    # An owed reading without a decision is lost.
    del ledger.decisions[127]
    assert summarize(outage(end_seq=128), ledger, log_of(ledger), set(), owed)["lost"] == 1
