"""Does an occupancy recipe beat the ``light > 364 lx`` rule on every split? (issue 18)

    python -m bench.occupancy_rule [--seeds 0 1 2] [--data-dir ../shared/data]

Splits, in time order: the model trains on the first 80 % of ``datatraining.txt``;
its last 20 % (the later days) is **validation**, the only split anything is chosen on
(Platt scaling, hence the operating point); ``datatest.txt`` is **test**, never used
to choose. (``datatest2.txt``, the paper's second test week, is not in
``../shared/data``.) Features come from ``models.occupancy.data.build_features``,
the hub's ``FeatureWindow`` code path.

Recipes, each trained with every seed (the network is the shipped ``OccupancyNet``,
the shipped hyper-parameters):

- ``shipped``: ``occupancy/v1``, inverse-frequency class weights, argmax (0.5, not
  calibrated): the recipe of the served model, here without the validation days.
- ``v1 calibrated``: ``occupancy/v1``, no class weights, Platt scaling fitted on
  validation, 0.5 on the calibrated probability (the recipe-only change).
- ``v1 weighted calibrated``: as above with the class weights kept.
- ``v2 calibrated``: ``occupancy/v2`` (v1 + CO2 slope, how long the light held, the
  light's half-hour min and max), no class weights, Platt on validation.
- ``v2 weighted calibrated``: as above with the class weights.

A recipe beats the rule on a split when its median accuracy is higher AND its median
false "occupied" count lower. Results: a printed table and
``bench/results/occupancy_rule.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from rich.console import Console

from bench.machine import machine_info
from bench.report import RESULTS, markdown_table, write

RULE_LX = 364.0
console = Console()


@dataclass(frozen=True)
class Recipe:
    name: str
    spec_id: str
    class_weights: bool
    calibrate: bool


RECIPES = (
    Recipe("shipped", "occupancy/v1", class_weights=True, calibrate=False),
    Recipe("v1 calibrated", "occupancy/v1", class_weights=False, calibrate=True),
    Recipe("v1 weighted calibrated", "occupancy/v1", class_weights=True, calibrate=True),
    Recipe("v2 calibrated", "occupancy/v2", class_weights=False, calibrate=True),
    Recipe("v2 weighted calibrated", "occupancy/v2", class_weights=True, calibrate=True),
)
SPLITS = ("validation", "test")


def margins(
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    evals: list[npt.NDArray[np.float32]],
    *,
    class_weights: bool,
    seed: int,
) -> list[npt.NDArray[np.float64]]:
    """Train the shipped network on (x, y); the logit margin it gives each of ``evals``."""
    import torch
    from torch import nn

    from models.occupancy.net import OccupancyNet
    from models.occupancy.net import class_weights as weights_of
    from models.occupancy.train import Hyper
    from models.training import make_deterministic, train_epoch

    make_deterministic()
    hp = Hyper()
    torch.manual_seed(seed)
    model = OccupancyNet(x)
    loss_fn = nn.CrossEntropyLoss(weight=weights_of(y) if class_weights else None)
    opt = torch.optim.Adam(model.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(hp.epochs):
        train_epoch(
            model,
            opt,
            len(xt),
            batch_size=hp.batch_size,
            gen=gen,
            batch_loss=lambda b: loss_fn(model.logits(xt[b]), yt[b]),
        )
    model.eval()
    out = []
    with torch.no_grad():
        for e in evals:
            z = model.logits(torch.from_numpy(e)).numpy().astype(np.float64)
            out.append(z[:, 1] - z[:, 0])
    return out


def run(data_dir: Path | None, seeds: list[int]) -> dict[str, Any]:
    from models.datasets import find_data_dir, load_occupancy
    from models.features import spec_by_id
    from models.occupancy.calibration import fit_platt, span_days, split_figures
    from models.occupancy.data import build_features
    from models.occupancy.train import Hyper

    found = find_data_dir(data_dir)
    train, test = load_occupancy("train", found), load_occupancy("test", found)
    cut = round(len(train) * (1.0 - Hyper().holdout_fraction))
    y_tr, y_te = train.occupancy.astype(np.int64), test.occupancy.astype(np.int64)
    split_y = {"validation": y_tr[cut:], "test": y_te}
    split_ts = {"validation": train.ts[cut:], "test": test.ts}
    split_light = {"validation": train.light[cut:], "test": test.light}
    result: dict[str, Any] = {
        "rule_lx": RULE_LX,
        "rows": {"fit": cut, "validation": len(train) - cut, "test": len(test)},
        "days": {s: round(span_days(split_ts[s]), 3) for s in SPLITS},
        "rule": {
            s: split_figures((split_light[s] > RULE_LX).astype(np.int64), split_y[s], split_ts[s])
            for s in SPLITS
        },
        "recipes": {},
    }
    features = {}
    for r in RECIPES:
        if r.spec_id not in features:
            spec = spec_by_id(r.spec_id)
            features[r.spec_id] = (build_features(train, spec), build_features(test, spec))
        x_tr, x_te = features[r.spec_id]
        runs = []
        for seed in seeds:
            z_val, z_te = margins(
                x_tr[:cut],
                y_tr[:cut],
                [x_tr[cut:], x_te],
                class_weights=r.class_weights,
                seed=seed,
            )
            z = {"validation": z_val, "test": z_te}
            if r.calibrate:
                platt = fit_platt(z_val, split_y["validation"])
                p = {s: platt.probability(z[s]) for s in SPLITS}
            else:
                p = {s: 1.0 / (1.0 + np.exp(-z[s])) for s in SPLITS}
            runs.append(
                {
                    s: split_figures((p[s] >= 0.5).astype(np.int64), split_y[s], split_ts[s], p[s])
                    for s in SPLITS
                }
            )
            console.print(
                f"{r.name:<24} seed {seed}: "
                + "  ".join(
                    f"{s} acc {runs[-1][s]['accuracy']:.4f} fp {runs[-1][s]['false_occupied']:.0f}"
                    for s in SPLITS
                )
            )
        result["recipes"][r.name] = {"spec_id": r.spec_id, "seeds": seeds, "runs": runs}
    return result


def median(runs: list[dict[str, dict[str, float]]], split: str, key: str) -> float:
    return statistics.median(r[split][key] for r in runs)


def spread(runs: list[dict[str, dict[str, float]]], split: str, key: str, fmt: str) -> str:
    values = [r[split][key] for r in runs]
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}} to {max(values):{fmt}})"


def beats_rule(result: dict[str, Any], name: str, split: str) -> bool:
    runs, rule = result["recipes"][name]["runs"], result["rule"][split]
    accuracy, false_occupied = float(rule["accuracy"]), float(rule["false_occupied"])
    return (
        median(runs, split, "accuracy") > accuracy
        and median(runs, split, "false_occupied") < false_occupied
    )


def markdown(result: dict[str, Any]) -> str:
    headers = [
        "recipe",
        "split",
        "accuracy",
        "false occupied",
        "false alarms/day",
        "false vacant",
        "ECE",
        "beats rule",
    ]
    rows: list[list[str]] = []
    for split in SPLITS:
        rule = result["rule"][split]
        rows.append(
            [
                f"`light > {RULE_LX:g} lx`",
                split,
                f"{rule['accuracy']:.4f}",
                f"{rule['false_occupied']:.0f}",
                f"{rule['false_alarms_per_day']:.1f}",
                f"{rule['false_vacant']:.0f}",
                "—",
                "—",
            ]
        )
        for name, rec in result["recipes"].items():
            runs = rec["runs"]
            rows.append(
                [
                    name,
                    split,
                    spread(runs, split, "accuracy", ".4f"),
                    spread(runs, split, "false_occupied", ".0f"),
                    spread(runs, split, "false_alarms_per_day", ".1f"),
                    spread(runs, split, "false_vacant", ".0f"),
                    spread(runs, split, "ece", ".3f"),
                    "yes" if beats_rule(result, name, split) else "no",
                ]
            )
    m, days = result["machine"], result["days"]
    return "\n".join(
        [
            "# Occupancy recipes against the `light > 364 lx` rule (issue 18)",
            "",
            "`python -m bench.occupancy_rule`. Trained on the first "
            f"{result['rows']['fit']} rows of `datatraining.txt`; validation = its last "
            f"{result['rows']['validation']} rows ({days['validation']:.2f} days), the only split "
            f"anything is chosen on; test = `datatest.txt` ({result['rows']['test']} rows, "
            f"{days['test']:.2f} days). Median over seeds {result['seeds']} (min to max). "
            "ECE: expected calibration error of P(occupied), 10 bins. A recipe beats the rule "
            "when its median accuracy is higher and its median false-occupied count lower.",
            "",
            markdown_table(headers, rows),
            "",
            f"Machine: {m['cpu']}, {m['cores']} cores, load {result['load']}, {m['date']}.",
        ]
    )


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["rule", *result["recipes"]]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label in (
        (axes[0], "accuracy", "accuracy"),
        (axes[1], "false_alarms_per_day", "false alarms per day"),
    ):
        for i, split in enumerate(SPLITS):
            vals = [result["rule"][split][key]] + [
                median(r["runs"], split, key) for r in result["recipes"].values()
            ]
            ax.bar(np.arange(len(names)) + 0.4 * i, vals, width=0.4, label=split)
        ax.set_xticks(np.arange(len(names)) + 0.2, names, rotation=25, ha="right", fontsize=8)
        ax.set_title(label)
        ax.legend()
    axes[0].set_ylim(0.9, 1.0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    import os

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    result = run(args.data_dir, args.seeds)
    result |= {"seeds": args.seeds, "machine": machine_info(), "load": load}
    md = markdown(result)
    write("occupancy_rule", result, md)
    plot(result, RESULTS / "occupancy_rule.png")
    console.print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
