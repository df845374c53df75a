"""Routine across homes: leave-one-home-out over the real homes (issue 18, part 2).

Run from the repository root::

    python -m models.routine.cross_home [--data-dir ../shared/data] [--seeds 0,1,2]
        [--vocabulary x2|x1|v1] [--untouched houseD,houseE] [--markdown FILE]

For each held-out home of A-C, fresh models (one per seed, probabilities averaged)
are trained on the OTHER homes at once (their installer mappings,
``models/routine/homes/*.toml``, through :class:`models.routine.spec.RoutineWindow`
with the chosen vocabulary, each home's features standardized over its own minutes
without labels: :func:`standardize_per_home`) and scored on
the held-out home's annotated minutes: macro-F1 over the classes that home has,
per-class F1, and beside it the time-of-day and majority baselines fitted on the
same training homes. Training rows get a copy with whole tracks blanked
(:class:`TrackDropout`), so the model does not lean on one sensor kind or area that
another home may not have. The model abstains ("unsure") when its most probable class
is a short activity (toilet, shower, drink) with probability below a threshold chosen
on the training homes only (inner leave-one-home-out); an abstention counts as a miss
for recall, never as a false alarm. Nothing is tuned on the held-out home.
Then D and E (MIT object-sensor homes) are scored by models trained on all of A-C,
over the classes they annotate. Seeded and deterministic: the same command prints
the same figures.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from models.datasets import add_data_dir_argument, find_data_dir
from models.routine.data import CLASSES, Dataset, F32Array, F64Array, I64Array
from models.routine.fit import fit
from models.routine.home_data import UNKNOWN, home_dataset, load_home, load_mapping
from models.routine.net import Hyper
from models.routine.spec import (
    CROSS_HOME_VOCABULARY,
    CROSS_HOME_VOCABULARY_X1,
    V1_VOCABULARY,
    Vocabulary,
)
from models.training import make_deterministic

HELD_OUT: tuple[str, ...] = ("houseA", "houseB", "houseC")
VOCABULARIES = {
    "x2": CROSS_HOME_VOCABULARY,
    "x1": CROSS_HOME_VOCABULARY_X1,
    "v1": V1_VOCABULARY,
}
SHORT: tuple[str, ...] = ("toilet", "shower", "drink")
# "Unsure": predicted as this index, which is no class.
UNSURE = len(CLASSES)
THRESHOLDS: tuple[float, ...] = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7)
HYPER = Hyper(epochs=8, class_weight_power=0.5, dropout=0.2)
# Share of a training row's tracks blanked in its augmented copy (:class:`TrackDropout`).
TRACK_DROPOUT = 0.2


@dataclass(frozen=True)
class Scored:
    """One held-out home: the model's, and the baselines', per-class report."""

    home: str
    classes: tuple[str, ...]  # the classes the held-out home has
    threshold: float
    model: dict[str, float]
    time_of_day: dict[str, float]
    majority: dict[str, float]
    unsure_share: float


def standardize_per_home(x: F32Array) -> F32Array:
    """Each feature to zero mean and unit variance over the home's OWN minutes.

    Unsupervised adaptation: it uses every ready minute of the home, annotated or
    not, and no label, so a hub can keep these statistics from its own stream. A
    PIR that fires 30 times an hour and a reed switch that fires twice then mean
    the same thing: "more than usual in this home". Constant features become 0.
    """
    mean = x.mean(axis=0, dtype=np.float64)
    std = x.std(axis=0, dtype=np.float64)
    std[std <= 1e-6] = 1.0
    out: F32Array = ((x - mean) / std).astype(np.float32)
    return out


def load_datasets(
    data_dir: Path | None, names: Sequence[str], vocabulary: Vocabulary
) -> dict[str, Dataset]:
    """Each home's ready minutes, standardized per home; labels may be UNKNOWN."""
    out: dict[str, Dataset] = {}
    for name in names:
        mapping = load_mapping(name)
        ds = home_dataset(load_home(data_dir, name, mapping), mapping, vocabulary)
        out[name] = replace(ds, x=standardize_per_home(ds.x))
    return out


def annotated(ds: Dataset) -> Dataset:
    """The minutes of ``ds`` with a label (UNKNOWN ones dropped)."""
    keep = ds.y != UNKNOWN
    return Dataset(ds.starts[keep], ds.x[keep], ds.y[keep], ds.days[keep])


def scores_over(y: I64Array, pred: I64Array, classes: Sequence[str]) -> dict[str, float]:
    """Per-class F1 and their mean over ``classes`` (an UNSURE prediction is a miss)."""
    r = _report_with_unsure(y, pred)
    out = {f"f1_{c}": r[f"f1_{c}"] for c in CLASSES}
    out["macro_f1"] = float(np.mean([r[f"f1_{c}"] for c in classes]))
    out["accuracy"] = r["accuracy"]
    return out


def _report_with_unsure(y: I64Array, pred: I64Array) -> dict[str, float]:
    # An UNSURE slice is scored against a phantom class: it is in no class's
    # predicted column, so it lowers the true class's recall and nobody's precision.
    out: dict[str, float] = {"accuracy": float(np.mean(pred == y))}
    for i, c in enumerate(CLASSES):
        tp = float(np.sum((pred == i) & (y == i)))
        p = float(np.sum(pred == i))
        a = float(np.sum(y == i))
        prec = tp / p if p else 0.0
        rec = tp / a if a else 0.0
        out[f"f1_{c}"] = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return out


def abstain(probs: F32Array, threshold: float) -> I64Array:
    """argmax, or UNSURE where it is a short activity below ``threshold``."""
    pred: I64Array = probs.argmax(axis=1).astype(np.int64)
    short = np.isin(pred, [CLASSES.index(c) for c in SHORT])
    pred[short & (probs.max(axis=1) < threshold)] = UNSURE
    return pred


@dataclass(frozen=True)
class TrackDropout:
    """Augmentation for homes instrumented unlike the training homes: every training
    row gets a copy in which each track (an area's, a kind's, the washroom's, the
    home's, the entrance inputs; never the time of day) is blanked with probability
    ``p``. Blank is 0, the home's own mean after :func:`standardize_per_home`: what a
    home without that sensor shows. The model learns not to lean on one track alone.
    """

    track: I64Array  # per input: its track's index, -1 if never blanked
    p: float

    @classmethod
    def of(cls, vocabulary: Vocabulary, p: float) -> TrackDropout:
        names = [n for n, _ in vocabulary.layout()]
        prefixes = [n.rsplit(".", 1)[0] if "." in n else "" for n in names]
        tracks = sorted({q for q in prefixes if q})
        index = np.array([tracks.index(q) if q else -1 for q in prefixes], dtype=np.int64)
        return cls(index, p)

    def augment(self, x: F32Array, y: I64Array, seed: int) -> tuple[F32Array, I64Array]:
        """``x`` and its blanked copy stacked (labels twice); seeded."""
        if self.p <= 0.0:
            return x, y
        rng = np.random.default_rng(seed)
        n_tracks = int(self.track.max()) + 1
        keep = rng.random((len(x), n_tracks)) >= self.p
        mask = np.ones(x.shape, dtype=np.float32)
        cols = self.track >= 0
        mask[:, cols] = keep[:, self.track[cols]]
        return np.concatenate([x, x * mask]), np.concatenate([y, y])


def train(
    train_sets: Sequence[Dataset],
    hp: Hyper,
    seeds: Sequence[int],
    *,
    drop: TrackDropout | None = None,
) -> list[torch.nn.Module]:
    """One model per seed on the annotated minutes of ``train_sets`` at once (with
    ``drop``: and their blanked copies, drawn per seed)."""
    x = np.concatenate([d.x for d in train_sets])
    y = np.concatenate([d.y for d in train_sets])
    out: list[torch.nn.Module] = []
    for s in seeds:
        xs, ys = drop.augment(x, y, s) if drop is not None else (x, y)
        out.append(fit(xs, ys, hp=hp, seed=s, on_epoch=lambda _loss: None))
    return out


def probabilities(models: Sequence[torch.nn.Module], x: F32Array) -> F32Array:
    """The seeds' mean class probabilities."""
    with torch.no_grad():
        out: F32Array = np.mean([m(torch.from_numpy(x)).numpy() for m in models], axis=0)
    return out


def present(y: I64Array) -> tuple[str, ...]:
    return tuple(c for i, c in enumerate(CLASSES) if np.any(y == i))


def choose_threshold(
    sets: dict[str, Dataset], hp: Hyper, seed: int, *, drop: TrackDropout | None = None
) -> float:
    """The abstention threshold with the best mean macro-F1 in leave-one-home-out over
    ``sets`` (the outer fold's training homes, annotated minutes; one seed)."""
    if len(sets) < 2:
        return 0.0
    totals = np.zeros(len(THRESHOLDS))
    for h, test in sets.items():
        rest = [d for n, d in sets.items() if n != h]
        probs = probabilities(train(rest, hp, [seed], drop=drop), test.x)
        for j, t in enumerate(THRESHOLDS):
            totals[j] += scores_over(test.y, abstain(probs, t), present(test.y))["macro_f1"]
    return THRESHOLDS[int(np.argmax(totals))]


def _slot(starts: F64Array, bins: int) -> I64Array:
    out: I64Array = np.minimum(
        (np.mod(starts, 86_400.0) * bins / 86_400.0).astype(np.int64), bins - 1
    )
    return out


def time_of_day_table(train_sets: Sequence[Dataset], bins: int = 48) -> I64Array:
    """Most frequent class per half hour of the day over the training homes."""
    table = np.zeros((bins, len(CLASSES)), dtype=np.int64)
    for d in train_sets:
        np.add.at(table, (_slot(d.starts, bins), d.y), 1)
    out: I64Array = table.argmax(axis=1).astype(np.int64)
    return out


def score_home(
    name: str,
    test: Dataset,
    train_sets: Sequence[Dataset],
    probs: F32Array,
    threshold: float,
) -> Scored:
    """The model's and both baselines' scores on ``test`` (annotated minutes)."""
    classes = present(test.y)
    pred = abstain(probs, threshold)
    table = time_of_day_table(train_sets)
    counts = np.bincount(np.concatenate([d.y for d in train_sets]), minlength=len(CLASSES))
    majority = np.full(len(test.y), int(counts.argmax()), dtype=np.int64)
    return Scored(
        name,
        classes,
        threshold,
        scores_over(test.y, pred, classes),
        scores_over(test.y, table[_slot(test.starts, len(table))], classes),
        scores_over(test.y, majority, classes),
        float(np.mean(pred == UNSURE)),
    )


def leave_one_home_out(
    sets: dict[str, Dataset],
    hp: Hyper,
    seeds: Sequence[int],
    *,
    tune_threshold: bool = True,
    untouched: Sequence[str] = (),
    drop: TrackDropout | None = None,
) -> list[Scored]:
    """Each home of :data:`HELD_OUT` scored by models trained on the others; then
    each ``untouched`` home (never looked at while designing) by models trained on
    all of :data:`HELD_OUT`, over the classes it has."""
    labelled = {n: annotated(d) for n, d in sets.items()}
    out: list[Scored] = []
    folds = [(h, [h], [n for n in HELD_OUT if n != h]) for h in HELD_OUT]
    if untouched:
        folds.append(("all", list(untouched), list(HELD_OUT)))
    for _, tests, training in folds:
        rest = {n: labelled[n] for n in training}
        threshold = choose_threshold(rest, hp, seeds[0], drop=drop) if tune_threshold else 0.0
        models = train(list(rest.values()), hp, seeds, drop=drop)
        for name in tests:
            test = labelled[name]
            probs = probabilities(models, test.x)
            out.append(score_home(name, test, list(rest.values()), probs, threshold))
    return out


def markdown(results: Sequence[Scored], title: str) -> str:
    lines = [
        f"### {title}",
        "",
        "| held-out home | model macro-F1 | time-of-day | majority | "
        + " | ".join(f"F1 {c}" for c in CLASSES)
        + " | unsure | threshold |",
        "|---|---|---|---|" + "---|" * len(CLASSES) + "---|---|",
    ]
    for r in results:
        cells = [f"{r.model[f'f1_{c}']:.2f}" if c in r.classes else "—" for c in CLASSES]
        lines.append(
            f"| {r.home} | **{r.model['macro_f1']:.3f}** | {r.time_of_day['macro_f1']:.3f} | "
            f"{r.majority['macro_f1']:.3f} | "
            + " | ".join(cells)
            + f" | {100 * r.unsure_share:.1f} % | {r.threshold:.1f} |"
        )
    return "\n".join(lines) + "\n"


def dropout_rate(text: str) -> float:
    """``--track-dropout``: a share in [0, 1) (1 would blank every track)."""
    try:
        p = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= p < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Routine: leave-one-home-out over A-C.")
    parser.add_argument("--vocabulary", choices=sorted(VOCABULARIES), default="x2")
    parser.add_argument("--seeds", default="0,1,2", help="ensemble of one model per seed")
    parser.add_argument("--untouched", default="houseD,houseE", help="homes scored last")
    parser.add_argument("--epochs", type=int, default=HYPER.epochs)
    parser.add_argument("--no-abstain", action="store_true")
    parser.add_argument(
        "--track-dropout",
        type=dropout_rate,
        default=TRACK_DROPOUT,
        help="share of tracks blanked in each row's augmented copy (0: no copy)",
    )
    parser.add_argument("--markdown", type=Path, default=None)
    add_data_dir_argument(parser)
    args = parser.parse_args(argv)
    make_deterministic()
    untouched = tuple(h for h in args.untouched.split(",") if h)
    seeds = [int(s) for s in args.seeds.split(",")]
    vocabulary = VOCABULARIES[args.vocabulary]
    sets = load_datasets(find_data_dir(args.data_dir), (*HELD_OUT, *untouched), vocabulary)
    hp = replace(HYPER, epochs=args.epochs)
    drop = TrackDropout.of(vocabulary, args.track_dropout)
    results = leave_one_home_out(
        sets, hp, seeds, tune_threshold=not args.no_abstain, untouched=untouched, drop=drop
    )
    title = (
        f"Leave-one-home-out over {', '.join(HELD_OUT)}, then {', '.join(untouched)} "
        f"(trained on all three); vocabulary {vocabulary.spec_id}, seeds {args.seeds}, "
        f"track dropout {args.track_dropout:g}"
    )
    text = markdown(results, title)
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
