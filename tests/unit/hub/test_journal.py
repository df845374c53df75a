"""The hub's readings journal (``hub.journal``): what a killed hub finds again on start.

A journal is never closed here before it is reopened: that is a kill -9 (the SQLite
file is what a crashed process leaves behind)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hub.journal import PRUNE_EVERY, Journal
from hub.pipeline import Outgoing


def killed(j: Journal) -> None:
    """What a kill -9 leaves: the connection gone, its open transaction never committed."""
    j._db.close()


def reopen(path: Path, history: int = 10) -> list[tuple[str, bool]]:
    again = Journal(path, history=history)
    entries = [(e.topic, e.decided) for e in again.entries()]
    killed(again)
    return entries


def test_committed_readings_survive_a_kill_and_uncommitted_ones_do_not(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    j = Journal(path, history=10)
    j.append("t/a", b"1")
    j.append("t/b", b"2")
    j.commit()
    j.append("t/c", b"3")  # not committed: never acknowledged to the broker either
    killed(j)
    assert reopen(path) == [("t/a", False), ("t/b", False)]


def test_a_reading_is_decided_only_once_every_decision_it_owes_settled(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    j = Journal(path, history=10)
    two, none, one = j.append("t/two", b""), j.append("t/none", b""), j.append("t/one", b"")
    j.taken(two, 2)  # e.g. occupancy and comfort both decide on it
    j.taken(none, 0)  # an incomplete window: nothing to decide
    j.settled([one])  # settled before taken() (a duplicate, refused at submit)
    j.taken(one, 1)
    j.settled([two])
    j.commit()
    assert reopen(path) == [("t/two", False), ("t/none", True), ("t/one", True)]
    j.settled([two])
    assert j.open_readings == 0
    killed(j)
    assert reopen(path) == [("t/two", True), ("t/none", True), ("t/one", True)]


def test_settled_is_durable_before_it_returns(tmp_path: Path) -> None:
    # The hub publishes a decision right after settled(): a kill then must not decide
    # the reading again (a second decision on MQTT for one reading).
    path = tmp_path / "j.sqlite"
    j = Journal(path, history=10)
    rid = j.append("t/a", b"")
    j.taken(rid, 1)
    j.settled([rid])
    killed(j)
    assert reopen(path) == [("t/a", True)]


def test_history_keeps_the_newest_decided_readings_and_every_undecided_one(
    tmp_path: Path,
) -> None:
    path = tmp_path / "j.sqlite"
    j = Journal(path, history=5)
    undecided = j.append("t/old-undecided", b"")
    j.taken(undecided, 1)
    for n in range(PRUNE_EVERY + 20):
        j.taken(j.append(f"t/{n}", b""), 0)
    j.commit()
    killed(j)
    entries = reopen(path, history=5)
    assert entries[0] == ("t/old-undecided", False)
    assert entries[1:] == [(f"t/{n}", True) for n in range(PRUNE_EVERY + 15, PRUNE_EVERY + 20)]


def test_negative_history_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="history"):
        Journal(tmp_path / "j.sqlite", history=-1)


def test_a_decision_recorded_but_not_yet_published_is_still_in_the_outbox(
    tmp_path: Path,
) -> None:
    # Marked decided (never decided again) together with its message: a kill before the
    # broker acknowledged it leaves the message to publish on the next start.
    path = tmp_path / "j.sqlite"
    j = Journal(path, history=10)
    a, b = j.append("t/a", b""), j.append("t/b", b"")
    j.taken(a, 1)
    j.taken(b, 1)
    j.settled([a, b], [Outgoing("d/a", b"{a}", "id-a"), Outgoing("d/b", b"{b}", "id-b")])
    j.published([Outgoing("d/a", b"{a}", "id-a")])
    j.commit()
    killed(j)
    again = Journal(path, history=10)
    assert again.outbox() == [Outgoing("d/b", b"{b}", "id-b")]
    assert [e.decided for e in again.entries()] == [True, True]
