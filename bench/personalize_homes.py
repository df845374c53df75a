"""Does personalization pay in a new home? Leave-one-home-out (issue 18, part 3).

Run from the repository root::

    python -m bench.personalize_homes [--seeds 0,1,2] [--vocabulary x1|x2|v1] [--quick]
        [--json bench/results/personalize_homes.json]
        [--markdown bench/results/personalize_homes.md] [--plot docs/img/personalize_homes.png]

For each held-out home of A-C, the base is the cross-home routine model trained on the
OTHER two homes (:mod:`models.routine.cross_home`: vocabulary ``routine/x2`` unless
``--vocabulary`` says otherwise, features standardized per home without labels, track
dropout :data:`~models.routine.cross_home.TRACK_DROPOUT`; no filter or abstention). The held-out home's annotated days, in time
order: fine-tune on its first 1, 3 or 7 labelled days, test on the days after the
seventh (the same test days for every k). Beside the base:

* **DP fine-tune** with :func:`services.personalization.finetune.dp_finetune` at
  ε ∈ {0.5, 1, 4}, for both privacy units the service has (the household-day, its
  default, at δ 1e-3; one example, at δ 1e-6: the service's deltas for its 30-day
  retention), with two recipes: the service's own (``hyper_parameters``) and a
  reworked one chosen from :data:`GRID` on the OTHER homes only (below);
* the same two recipes without privacy;
* a **local model from scratch** on the fine-tuning days (the routine recipe, no DP).

Choosing the reworked recipe never looks at the target home: for target A, each
grid setting is scored on B with a base trained on C alone, and on C with a base
trained on B alone (7 days, ε = 1, one seed), and the setting with the best mean
gain over its base wins. Replay rows are public: a fixed sample of
the base's own training homes, as many as the private rows. Class weights are the
base recipe's (from the training homes), never the private rows'.

Metric: macro-F1 over the classes the test days have (argmax, no abstention); each
figure is the median over seeds (min to max). Seeded and deterministic.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from models.datasets import add_data_dir_argument, find_data_dir
from models.routine.cross_home import (
    HELD_OUT,
    HYPER,
    TRACK_DROPOUT,
    VOCABULARIES,
    TrackDropout,
    annotated,
    dropout_rate,
    load_datasets,
    present,
    probabilities,
    scores_over,
    train,
)
from models.routine.data import Dataset, F32Array, I64Array
from models.routine.fit import fit
from models.routine.net import class_weights
from models.training import make_deterministic
from services.personalization.finetune import dp_finetune, hyper_parameters
from services.personalization.privacy_unit import derived_delta

DAYS: tuple[int, ...] = (1, 3, 7)
EPSILONS: tuple[float, ...] = (0.5, 1.0, 4.0)
UNITS: tuple[str, ...] = ("day", "example")
RETENTION_DAYS = 30.0  # the service's default: it sets each unit's delta


@dataclass(frozen=True)
class Recipe:
    trainable: str
    distill_weight: float
    replay: bool
    lr: float
    epochs: float
    expected_batch_size: int
    max_grad_norm: float = 1.0
    accountant: str = "prv"

    @property
    def name(self) -> str:
        return (
            f"{self.trainable}, distill {self.distill_weight:g}, "
            f"{'replay' if self.replay else 'no replay'}, lr {self.lr:g}, {self.epochs:g} epochs"
        )


def service_recipe(unit: str) -> Recipe:
    """The personalization service's recipe for routine and ``unit``."""
    h = hyper_parameters("routine", unit)
    return Recipe(
        h["trainable"],
        h["distill_weight"],
        h["replay"],
        h["lr"],
        h["epochs"],
        h["expected_batch_size"],
        h["max_grad_norm"],
        h["accountant"],
    )


def grid(unit: str) -> list[Recipe]:
    """The candidates for the reworked recipe: which layers, how much distillation and
    replay, learning rate (1, 3 and 5 times the service's) and epochs (half the
    service's, or as many); the batch as the service's for ``unit``. Fewer epochs are
    fewer noisy steps for the same ε."""
    s = service_recipe(unit)
    return [
        Recipe(t, d, r, lr, epochs, s.expected_batch_size)
        for t in ("all", "head")
        for d in (0.0, 1.0)
        for r in (False, True)
        for lr in (s.lr, 3 * s.lr, 5 * s.lr)
        for epochs in (s.epochs / 2, s.epochs)
    ]


@dataclass(frozen=True)
class Fold:
    """A target home, its base model, and what fine-tuning may use."""

    target: Dataset
    base: torch.nn.Module
    public_x: F32Array  # the base's training homes: replay rows come from here
    public_y: I64Array
    weights: list[float]
    test: np.ndarray  # mask over target: the days after the seventh labelled day
    day_list: np.ndarray  # the target's labelled days, in order


def make_fold(
    target: Dataset, training: Sequence[Dataset], seed: int, drop: TrackDropout | None = None
) -> Fold:
    base = train(training, HYPER, [seed], drop=drop)[0].eval()
    x = np.concatenate([d.x for d in training])
    y = np.concatenate([d.y for d in training])
    days = np.unique(target.days)
    weights = [float(w) for w in class_weights(y, HYPER.class_weight_power)]
    return Fold(target, base, x, y, weights, target.days > days[max(DAYS) - 1], days)


def macro_f1(model: torch.nn.Module, fold: Fold) -> float:
    t = fold.target
    pred = probabilities([model], t.x[fold.test]).argmax(axis=1).astype(np.int64)
    y = t.y[fold.test]
    return float(scores_over(y, pred, present(y))["macro_f1"])


def finetune(
    fold: Fold, k: int, recipe: Recipe, *, unit: str, epsilon: float | None, seed: int
) -> float:
    """Macro-F1 after fine-tuning on the first ``k`` labelled days (None: no privacy)."""
    t = fold.target
    rows = np.isin(t.days, fold.day_list[:k])
    replay = None
    if recipe.replay:
        rng = np.random.default_rng(10_000 + seed)
        n = min(int(rows.sum()), len(fold.public_y))
        idx = np.sort(rng.choice(len(fold.public_y), size=n, replace=False))
        replay = (fold.public_x[idx], fold.public_y[idx])
    res = dp_finetune(
        fold.base,
        t.x[rows],
        t.y[rows],
        target_epsilon=epsilon,
        delta=derived_delta(unit, RETENTION_DAYS),
        epochs=recipe.epochs,
        expected_batch_size=recipe.expected_batch_size,
        max_grad_norm=recipe.max_grad_norm,
        lr=recipe.lr,
        accountant=recipe.accountant,
        trainable=recipe.trainable,
        distill_weight=recipe.distill_weight,
        replay=replay,
        class_weights=fold.weights,
        seed=seed,
        days=t.days[rows] if unit == "day" else None,
    )
    return macro_f1(res.model.eval(), fold)


def local(fold: Fold, k: int, seed: int) -> float:
    t = fold.target
    rows = np.isin(t.days, fold.day_list[:k])
    return macro_f1(fit(t.x[rows], t.y[rows], hp=HYPER, seed=seed, on_epoch=lambda _l: None), fold)


def gap_closed(value: float, base: float, local_: float) -> float:
    """Share of the base-to-local gap closed (NaN where local does not beat base)."""
    return (value - base) / (local_ - base) if local_ > base else math.nan


def choose_recipe(
    tuning: Sequence[Fold], unit: str, seed: int, progress: Any = None
) -> tuple[Recipe, list[dict[str, Any]]]:
    """The grid setting with the best mean gain in macro-F1 over the base (7 days,
    ε 1) over ``tuning`` folds. (The share of the gap closed is what the issue's floor
    asks for, but on a fold where local barely beats the base it swings by +-100 %.)"""
    k = max(DAYS)
    refs = [(macro_f1(f.base, f), local(f, k, seed)) for f in tuning]
    table: list[dict[str, Any]] = []
    scored: list[tuple[float, Recipe]] = []
    for recipe in grid(unit):
        f1s = [finetune(f, k, recipe, unit=unit, epsilon=1.0, seed=seed) for f in tuning]
        gaps = [gap_closed(v, b, loc) for v, (b, loc) in zip(f1s, refs, strict=True)]
        gain = float(np.mean([v - b for v, (b, _) in zip(f1s, refs, strict=True)]))
        scored.append((gain, recipe))
        table.append({"recipe": asdict(recipe), "macro_f1": f1s, "gap_closed": gaps, "gain": gain})
        if progress is not None:
            progress()
    return max(scored, key=lambda sr: sr[0])[1], table


def spread(values: Sequence[float]) -> dict[str, float]:
    return {
        "median": float(np.median(values)),
        "min": float(np.min(values)),
        "max": float(np.max(values)),
    }


def run(
    sets: dict[str, Dataset],
    seeds: Sequence[int],
    console: Console,
    *,
    quick: bool = False,
    drop: TrackDropout | None = None,
) -> dict[str, Any]:
    labelled = {n: annotated(d) for n, d in sets.items()}
    units = UNITS[:1] if quick else UNITS
    per_home: dict[str, Any] = {}
    chosen: dict[str, Any] = {}
    n_grid = len(grid("day"))
    total = len(HELD_OUT) * (
        len(units) * n_grid + len(seeds) * len(DAYS) * (2 + len(units) * 2 * (len(EPSILONS) + 1))
    )
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("personalize", total=total)

        def tick() -> None:
            bar.update(task, advance=1)

        for target in HELD_OUT:
            others = [n for n in HELD_OUT if n != target]
            bar.update(task, description=f"{target}: choosing the recipe on {', '.join(others)}")
            # Tuning folds never see the target: each other home, its base from the third.
            tuning = [
                make_fold(labelled[h], [labelled[n] for n in others if n != h], seeds[0], drop)
                for h in others
            ]
            recipes: dict[str, dict[str, Recipe]] = {}
            for unit in units:
                best, table = choose_recipe(tuning, unit, seeds[0], tick)
                recipes[unit] = {"service": service_recipe(unit), "reworked": best}
                chosen[f"{target}/{unit}"] = {"chosen": asdict(best), "grid": table}
            bar.update(task, description=f"{target}: base on {', '.join(others)}")
            rows: dict[str, dict[str, list[float]]] = {}

            def put(
                key: str, k: int, value: float, rows: dict[str, dict[str, list[float]]] = rows
            ) -> None:
                rows.setdefault(key, {}).setdefault(str(k), []).append(value)
                tick()

            for seed in seeds:
                fold = make_fold(labelled[target], [labelled[n] for n in others], seed, drop)
                for k in DAYS:
                    put("base", k, macro_f1(fold.base, fold))
                    put("local from scratch (no DP)", k, local(fold, k, seed))
                    for unit in units:
                        for which, recipe in recipes[unit].items():
                            put(
                                f"{which} recipe, no DP ({unit})",
                                k,
                                finetune(fold, k, recipe, unit=unit, epsilon=None, seed=seed),
                            )
                            for eps in EPSILONS:
                                put(
                                    f"{which} recipe, DP eps {eps:g} ({unit})",
                                    k,
                                    finetune(fold, k, recipe, unit=unit, epsilon=eps, seed=seed),
                                )
            per_home[target] = {
                "test_days": int(len(fold.day_list) - max(DAYS)),
                "recipes": {u: {w: asdict(r) for w, r in rs.items()} for u, rs in recipes.items()},
                "rows": {
                    key: {k: spread(v) for k, v in by_k.items()} for key, by_k in rows.items()
                },
            }
    return {"seeds": list(seeds), "units": list(units), "homes": per_home, "choice": chosen}


def _cell(v: dict[str, float]) -> str:
    return f"{v['median']:.3f} ({v['min']:.2f}-{v['max']:.2f})"


def headline(res: dict[str, Any], unit: str) -> list[tuple[str, float, float, float, float, float]]:
    """Per home at 7 days: base, local, service DP eps 1, reworked DP eps 1, gap closed."""
    out = []
    k = str(max(DAYS))
    for home, h in res["homes"].items():
        r = h["rows"]
        base = r["base"][k]["median"]
        loc = r["local from scratch (no DP)"][k]["median"]
        service = r[f"service recipe, DP eps 1 ({unit})"][k]["median"]
        reworked = r[f"reworked recipe, DP eps 1 ({unit})"][k]["median"]
        out.append((home, base, loc, service, reworked, gap_closed(reworked, base, loc)))
    return out


def markdown(res: dict[str, Any]) -> str:
    lines = [
        "# Personalization in a new home: leave-one-home-out over van Kasteren A-C",
        "",
        "`python -m bench.personalize_homes` (see its docstring for the protocol). "
        f"Seeds {', '.join(map(str, res['seeds']))}; each cell is the median macro-F1 over "
        "seeds (min-max), on the held-out home's days after its seventh labelled day.",
    ]
    for unit in res["units"]:
        delta = derived_delta(unit, RETENTION_DAYS)
        lines += [
            "",
            f"## At 7 labelled days, ε = 1, privacy unit: {unit} (δ {delta:g})",
            "",
            "| held-out home | base | local from scratch (no DP) | service recipe, DP | "
            "reworked recipe, DP | share of the gap closed (reworked) |",
            "|---|---|---|---|---|---|",
        ]
        for home, base, loc, service, reworked, gap in headline(res, unit):
            closed = "no gap (base >= local)" if math.isnan(gap) else f"{100 * gap:.0f} %"
            lines.append(
                f"| {home} | {base:.3f} | {loc:.3f} | {service:.3f} | {reworked:.3f} | {closed} |"
            )
    for home, h in res["homes"].items():
        lines += [
            "",
            f"## {home} ({h['test_days']} test days)",
            "",
            "Reworked recipe, chosen on the other homes: "
            + "; ".join(f"{u}: {Recipe(**rs['reworked']).name}" for u, rs in h["recipes"].items()),
            "",
            "| | " + " | ".join(f"{k} day{'s' if k > 1 else ''}" for k in DAYS) + " |",
            "|---|" + "---|" * len(DAYS),
        ]
        for key, by_k in h["rows"].items():
            lines.append(f"| {key} | " + " | ".join(_cell(by_k[str(k)]) for k in DAYS) + " |")
    return "\n".join(lines) + "\n"


def plot(res: dict[str, Any], path: Path) -> None:
    """Macro-F1 against epsilon at 7 days, one panel per held-out home."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = str(max(DAYS))
    homes = list(res["homes"])
    fig, axes = plt.subplots(1, len(homes), figsize=(4.2 * len(homes), 4.2), sharey=True)
    for ax, home in zip(np.atleast_1d(axes), homes, strict=True):
        r = res["homes"][home]["rows"]
        for unit, style in zip(res["units"], ("-", "--"), strict=False):
            for which, colour in (("service", "tab:grey"), ("reworked", "tab:blue")):
                ys = [r[f"{which} recipe, DP eps {e:g} ({unit})"][k]["median"] for e in EPSILONS]
                ax.plot(
                    EPSILONS, ys, style, marker="o", color=colour, label=f"{which}, {unit} unit"
                )
        lines = (
            ("base", "black"),
            ("local from scratch (no DP)", "tab:green"),
            (f"service recipe, no DP ({res['units'][-1]})", "tab:orange"),
        )
        for key, colour in lines:
            ax.axhline(r[key][k]["median"], color=colour, linestyle=":", label=key)
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(list(EPSILONS), [f"{e:g}" for e in EPSILONS])
        ax.set_title(f"held out: {home}, 7 labelled days")
        ax.set_xlabel("epsilon")
    np.atleast_1d(axes)[0].set_ylabel("macro-F1, later days")
    handles, labels = np.atleast_1d(axes)[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Routine personalization, leave-one-home-out.")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument(
        "--vocabulary", choices=sorted(VOCABULARIES), default="x2", help="the base's features"
    )
    parser.add_argument(
        "--track-dropout", type=dropout_rate, default=TRACK_DROPOUT, help="the base's augmentation"
    )
    parser.add_argument("--quick", action="store_true", help="the day unit only")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None)
    add_data_dir_argument(parser)
    args = parser.parse_args(argv)
    make_deterministic()
    torch.set_num_threads(1)
    # Opacus' PRV accountant takes log(0) on its grid's edge: harmless, and noisy.
    warnings.filterwarnings("ignore", category=RuntimeWarning, module="opacus")
    console = Console(stderr=True)
    vocabulary = VOCABULARIES[args.vocabulary]
    sets = load_datasets(find_data_dir(args.data_dir), HELD_OUT, vocabulary)
    seeds = [int(s) for s in args.seeds.split(",")]
    drop = TrackDropout.of(vocabulary, args.track_dropout)
    res = run(sets, seeds, console, quick=args.quick, drop=drop)
    text = markdown(res)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=str) + "\n")
    if args.markdown:
        args.markdown.write_text(text)
    if args.plot:
        plot(res, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
