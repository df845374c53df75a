"""The leave-one-home-out personalization protocol: what each step may see, and its report."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from bench import personalize_homes as ph
from models.routine.data import Dataset


def home(tag: float, days: int = 10) -> Dataset:
    n = days * 4
    return Dataset(
        starts=np.arange(n, dtype=np.float64) * 21_600.0,
        x=np.full((n, 3), tag, dtype=np.float32),  # which home a row came from
        y=np.arange(n, dtype=np.int64) % 3,
        days=np.repeat(np.arange(days, dtype=np.int64), 4),
    )


def test_the_recipe_is_chosen_without_the_target_home_and_tested_on_its_later_days(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    homes = {"houseA": home(1.0), "houseB": home(2.0), "houseC": home(3.0)}
    folds: list[tuple[float, list[float]]] = []  # (target, training homes) of each fold

    def make_fold(target: Dataset, training: list[Dataset], seed: int, drop: Any = None) -> Any:
        folds.append((float(target.x[0, 0]), [float(d.x[0, 0]) for d in training]))
        days = np.unique(target.days)
        return ph.Fold(target, None, target.x, target.y, [1.0] * 8, target.days > days[6], days)  # type: ignore[arg-type]

    def choose_recipe(tuning: Any, unit: str, seed: int, progress: Any = None) -> Any:
        return ph.service_recipe(unit), []

    ft_days: list[set[int]] = []

    def finetune(fold: ph.Fold, k: int, recipe: ph.Recipe, **kw: Any) -> float:
        ft_days.append(set(fold.day_list[:k].tolist()))
        return 0.5

    monkeypatch.setattr(ph, "choose_recipe", choose_recipe)
    monkeypatch.setattr(ph, "finetune", finetune)
    monkeypatch.setattr(ph, "local", lambda fold, k, seed: 0.6)
    monkeypatch.setattr(ph, "macro_f1", lambda model, fold: 0.4)
    monkeypatch.setattr(ph, "make_fold", make_fold)
    monkeypatch.setattr(ph, "annotated", lambda d: d)
    res = ph.run(homes, [0], Console(quiet=True), quick=True)
    # The first two folds of each target are its tuning folds: other homes only.
    for i, target in enumerate((1.0, 2.0, 3.0)):
        tuning, final = folds[3 * i : 3 * i + 2], folds[3 * i + 2]
        for t, training in tuning:
            assert target != t
            assert target not in training
        assert final == (target, [h for h in (1.0, 2.0, 3.0) if h != target])
    # Fine-tuning sees only the first k labelled days; the test days come after day 7.
    assert {frozenset(d) for d in ft_days} == {
        frozenset({0}),
        frozenset({0, 1, 2}),
        frozenset(range(7)),
    }
    assert res["homes"]["houseA"]["test_days"] == 3
    assert set(res["homes"]) == {"houseA", "houseB", "houseC"}


def test_the_recipe_choice_keeps_the_setting_that_gains_most_over_its_base(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    best = ph.grid("day")[5]
    monkeypatch.setattr(ph, "macro_f1", lambda model, fold: 0.4)
    monkeypatch.setattr(ph, "local", lambda fold, k, seed: 0.6)
    monkeypatch.setattr(
        ph, "finetune", lambda fold, k, recipe, **kw: 0.55 if recipe == best else 0.45
    )
    z = np.zeros(1)
    fold = ph.Fold(home(1.0), None, z, z, [], z, z)  # type: ignore[arg-type]
    chosen, table = ph.choose_recipe([fold, fold], "day", 0)
    assert chosen == best
    assert len(table) == len(ph.grid("day")) == 48
    assert len({r.name for r in ph.grid("day")}) == 48
    service = ph.service_recipe("day")
    assert {r.epochs for r in ph.grid("day")} == {service.epochs / 2, service.epochs}
    assert {r.lr for r in ph.grid("day")} == {service.lr, 3 * service.lr, 5 * service.lr}


def test_gap_closed() -> None:
    assert ph.gap_closed(0.55, 0.5, 0.6) == pytest.approx(0.5)
    assert math.isnan(ph.gap_closed(0.55, 0.5, 0.45))  # local does not beat the base


def result() -> dict[str, Any]:
    def cell(v: float) -> dict[str, dict[str, float]]:
        return {str(k): {"median": v, "min": v - 0.01, "max": v + 0.01} for k in ph.DAYS}

    rows = {
        "base": cell(0.5),
        "local from scratch (no DP)": cell(0.7),
        "service recipe, DP eps 1 (day)": cell(0.52),
        "reworked recipe, DP eps 1 (day)": cell(0.6),
    }
    for which in ("service", "reworked"):
        rows[f"{which} recipe, no DP (day)"] = cell(0.65)
        for e in ph.EPSILONS:
            rows.setdefault(f"{which} recipe, DP eps {e:g} (day)", cell(0.55))
    recipes = {
        "day": {"service": vars(ph.service_recipe("day")), "reworked": vars(ph.grid("day")[0])}
    }
    return {
        "seeds": [0],
        "units": ["day"],
        "homes": {"houseA": {"test_days": 19, "recipes": recipes, "rows": rows}},
        "choice": {},
    }


def test_the_report_gives_the_share_of_the_gap_closed_at_7_days(tmp_path: Any) -> None:
    md = ph.markdown(result())
    assert "| houseA | 0.500 | 0.700 | 0.520 | 0.600 | 50 % |" in md
    assert "## houseA (19 test days)" in md
    assert "| base | 0.500 (0.49-0.51) | 0.500 (0.49-0.51) | 0.500 (0.49-0.51) |" in md
    ph.plot(result(), tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 10_000
