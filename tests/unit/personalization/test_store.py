"""The local example store: dedup with keyed ids, label order, pinning, retention and
refusals that never quote a value."""

from __future__ import annotations

import math
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from services.kit.errors import InvalidArgument
from services.personalization.store import ExampleStore, NewExample

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
LABELS = ("vacant", "occupied")


def ex(values: list[float], label: str, minutes: int = 0, source: str = "sensor") -> NewExample:
    return NewExample(
        np.asarray(values, dtype=np.float32), label, source, T0 + timedelta(minutes=minutes)
    )  # type: ignore[arg-type]


def test_add_dedups_and_loads_in_the_models_label_order(tmp_path: Path) -> None:
    with ExampleStore.open(tmp_path / "examples.db") as store:
        first = store.add("occupancy", [ex([1, 2], "occupied"), ex([3, 4], "vacant", 1)])
        assert [added for _, added in first] == [True, True]
        assert all(len(i) == 64 for i, _ in first)
        # Same model, input, label and time: a duplicate, in a later call or the same one.
        again = store.add("occupancy", [ex([1, 2], "occupied"), ex([5, 6], "vacant", 2)] * 2)
        assert [added for _, added in again] == [False, True, False, False]
        assert again[0][0] == first[0][0]
        # Another label or time is another example.
        assert store.add("occupancy", [ex([1, 2], "vacant")])[0][1]
        assert store.add("occupancy", [ex([1, 2], "occupied", 5)])[0][1]
        store.add("routine", [ex([9, 9, 9], "asleep")])
        assert store.count("occupancy") == 5
        assert store.counts() == {"occupancy": 5, "routine": 1}

        x, y = store.load("occupancy", LABELS, (2,))
        assert x.dtype == np.float32
        assert x.shape == (5, 2)
        assert x[0].tolist() == [1.0, 2.0]
        assert y.tolist() == [1, 0, 0, 0, 1]
        # Reversed label order, unknown labels and other shapes are handled.
        _, y_rev = store.load("occupancy", ("occupied", "vacant"), (2,))
        assert y_rev.tolist() == [0, 1, 1, 1, 0]
        assert store.load("occupancy", ("occupied",), (2,))[0].shape == (2, 2)
        assert store.load("occupancy", LABELS, (3,))[0].shape == (0, 3)
    assert stat.S_IMODE((tmp_path / "examples.db").stat().st_mode) == 0o600


def test_ids_are_keyed_per_store_and_survive_a_reopen(tmp_path: Path) -> None:
    one = ex([1.5, 2.5], "occupied")
    with ExampleStore.open(tmp_path / "a.db") as a:
        id_a = a.add("occupancy", [one])[0][0]
    with ExampleStore.open(tmp_path / "a.db") as a:
        assert a.add("occupancy", [one]) == [(id_a, False)]
    with ExampleStore.open(tmp_path / "b.db") as b:
        # Another hub's store: another key, so ids do not let anyone confirm values.
        assert b.example_id("occupancy", one) != id_a


def test_a_snapshot_pins_the_rows_a_job_reads(tmp_path: Path) -> None:
    with ExampleStore.open(tmp_path / "examples.db") as store:
        store.add("occupancy", [ex([i, i], "vacant", i) for i in range(3)])
        snap = store.snapshot("occupancy")
        assert snap.count == 3
        store.add("occupancy", [ex([7, 7], "occupied", 10)])
        x, _ = store.load("occupancy", LABELS, (2,), max_seq=snap.max_seq)
        assert len(x) == 3
        assert store.snapshot("routine").count == 0


def test_retention_deletes_old_examples(tmp_path: Path) -> None:
    with ExampleStore.open(tmp_path / "examples.db") as store:
        store.add("occupancy", [ex([1, 1], "vacant", -60 * 24 * 100), ex([2, 2], "vacant")])
        assert store.prune(T0 - timedelta(days=90)) == 1
        assert store.count("occupancy") == 1
        assert store.prune(T0 - timedelta(days=90)) == 0


def test_an_example_stamped_in_the_future_does_not_outlive_retention(tmp_path: Path) -> None:
    """observed_at a year ahead: still deleted once it has been on the hub past retention
    (the privacy budget's window assumes no example lives longer)."""
    with ExampleStore.open(tmp_path / "examples.db") as store:
        store.add("occupancy", [ex([1, 1], "vacant", 60 * 24 * 365)], now=T0)
        assert store.prune(T0 + timedelta(days=31) - timedelta(days=30)) == 1
        assert store.count("occupancy") == 0


def test_bad_examples_are_refused_without_their_values(tmp_path: Path) -> None:
    with ExampleStore.open(tmp_path / "examples.db") as store:
        with pytest.raises(InvalidArgument, match="finite") as e:
            store.add("occupancy", [ex([1.25, math.nan], "vacant")])
        assert "1.25" not in str(e.value)
        with pytest.raises(InvalidArgument, match="source"):
            store.add("occupancy", [ex([1, 2], "vacant", source="rumour")])
        with pytest.raises(InvalidArgument, match="timezone"):
            store.add(
                "occupancy",
                [NewExample(np.ones(2, np.float32), "vacant", "sensor", datetime(2026, 1, 1))],
            )
        assert store.count("occupancy") == 0
