"""Train the routine and presence classifier and ship it as ONNX artifacts.

Run from the repository root::

    python -m models.routine.train [--out models/artifacts/routine] [--epochs N] [--seed 0]
        [--data-dir ../shared/data]

From the recent firing of a home's binary sensors (doors, cupboards, appliances,
toilet flush), the current activity: away, asleep, toilet, shower, breakfast,
dinner, drink or idle. Inputs are the home-agnostic routine/v1 features of
:mod:`models.routine.spec` (per area and sensor kind, never per sensor id), built by
replaying the van Kasteren 2008 recording through :class:`RoutineWindow`, the code
the hub serves with. Leave-days-out cross-validation (fold models exported to ONNX
and scored in onnxruntime) gives the reported metrics, including the perturbed
"other home" on each fold's held-out days; the shipped model is then trained on all
days. Standardization is baked into the graph; the output is softmax probabilities.

The recipe and its CLI; the network is :mod:`models.routine.net`, its training loop
:mod:`models.routine.fit`, the model card :mod:`models.routine.card`.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import TaskID
from rich.table import Table

from models.datasets import REPO_ROOT, find_data_dir
from models.export import Latency, run
from models.manifest import InputSchema, Manifest
from models.recipe import (
    PathOption,
    check_parity,
    export_fp32_int8,
    feature_baseline,
    file_sizes,
    latencies,
    load_or_report,
    recipe_parser,
    rich_logging,
    training_progress,
    variants,
    write_artifacts,
)
from models.reference import reference_histograms
from models.routine.card import CardContext, model_card
from models.routine.data import (
    CLASSES,
    Dataset,
    KasterenData,
    build_dataset,
    class_counts,
    fit_time_of_day,
    load_kasteren,
    other_home,
    predict_time_of_day,
)
from models.routine.evaluate import confusion, plot_confusion, report, score_variants
from models.routine.fit import fit
from models.routine.net import F32Array, Hyper, I64Array, RoutineNet
from models.routine.spec import FEATURE_NAMES, FEATURE_UNITS, INPUT_SHAPE, SPEC_ID
from models.training import make_deterministic, param_count

log = logging.getLogger("models.routine.train")

NAME = "routine"
VERSION = "1.0.0"
FP32_FILE = "routine.onnx"
INT8_FILE = "routine.int8.onnx"
FILES = {"fp32": FP32_FILE, "int8": INT8_FILE}
INPUT_NAME = "features"
OUTPUT_NAME = "probabilities"
FIGURE = REPO_ROOT / "docs" / "img" / "routine_confusion.png"
PARITY_TOLERANCE = 1e-5
# int8 is served only if faster and its CV macro-F1 is within this of fp32.
INT8_MAX_F1_LOSS = 0.01
# The shipped recipe must beat the time-of-day baseline by this much (CV macro-F1).
MIN_GAIN_OVER_BASELINE = 0.15
MAX_ARTIFACT_BYTES = 2_000_000


# --- Training --------------------------------------------------------------------------


def export(model: RoutineNet, fp32: Path, int8: Path) -> None:
    export_fp32_int8(
        model,
        torch.zeros(2, *INPUT_SHAPE, dtype=torch.float32),
        fp32,
        int8,
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        doc=f"Roost {NAME} {VERSION}: {SPEC_ID} features -> P(activity)",
    )


@dataclass
class CvResult:
    """Held-out predictions of every slice, from the model that did not see its day."""

    fp32: I64Array
    int8: I64Array
    other_fp32: I64Array
    majority: I64Array
    time_of_day: I64Array


def cross_validate(home: Dataset, other: Dataset, *, hp: Hyper, seed: int) -> CvResult:
    folds = home.folds(hp.n_folds)
    n = len(home)
    res = CvResult(*(np.full(n, -1, dtype=np.int64) for _ in range(5)))
    progress_display = training_progress(
        "{task.description:<8}", "loss {task.fields[loss]:.4f}  {task.fields[info]}"
    )
    with progress_display as progress, tempfile.TemporaryDirectory() as tmp:
        for f in range(hp.n_folds):
            test = folds == f
            train = ~test
            days = sorted({int(d) for d in home.days[test]})
            task = progress.add_task(
                f"fold {f + 1}/{hp.n_folds}",
                total=hp.epochs,
                loss=float("nan"),
                info=f"held-out days {days[0]}-{days[-1]}",
            )

            def on_epoch(loss: float, task: TaskID = task) -> None:
                progress.update(task, advance=1, loss=loss)

            model = fit(home.x[train], home.y[train], hp=hp, seed=seed, on_epoch=on_epoch)
            fp32, int8 = Path(tmp) / f"fold{f}.onnx", Path(tmp) / f"fold{f}.int8.onnx"
            export(model, fp32, int8)
            res.fp32[test] = _predict(fp32, home.x[test])
            res.int8[test] = _predict(int8, home.x[test])
            res.other_fp32[test] = _predict(fp32, other.x[test])
            counts = np.bincount(home.y[train], minlength=len(CLASSES))
            res.majority[test] = int(np.argmax(counts))
            table = fit_time_of_day(home.starts[train], home.y[train])
            res.time_of_day[test] = predict_time_of_day(table, home.starts[test])
    return res


def _predict(path: Path, x: F32Array) -> I64Array:
    return np.asarray(run(path, x, INPUT_NAME, OUTPUT_NAME).argmax(axis=1), dtype=np.int64)


# --- Main ------------------------------------------------------------------------------


def load_homes(data: KasterenData) -> tuple[Dataset, Dataset]:
    """The recorded home and the perturbed "other home", slice by slice."""
    home = build_dataset(data)
    other = build_dataset(data, other_home(data))
    if not np.array_equal(home.starts, other.starts):
        raise RuntimeError("the two homes' slices differ")
    log.info(
        "%d slices of 60 s over %d days: %s", len(home), home.days.max() + 1, class_counts(home.y)
    )
    return home, other


@dataclass(frozen=True)
class Reports:
    """The cross-validated reports on the held-out days: the fold models (fp32, int8,
    on the other home) and the two baselines."""

    cv: dict[str, float]
    int8: dict[str, float]
    other: dict[str, float]
    majority: dict[str, float]
    time_of_day: dict[str, float]


def cv_reports(y: I64Array, res: CvResult) -> Reports:
    return Reports(
        cv=report(y, res.fp32),
        int8=report(y, res.int8),
        other=report(y, res.other_fp32),
        majority=report(y, res.majority),
        time_of_day=report(y, res.time_of_day),
    )


def fit_all_days(home: Dataset, hp: Hyper, seed: int) -> RoutineNet:
    """The shipped model: trained on every day."""
    with training_progress("{task.description:<8}", "loss {task.fields[loss]:.4f}") as progress:
        task = progress.add_task("all days", total=hp.epochs, loss=float("nan"))
        return fit(
            home.x,
            home.y,
            hp=hp,
            seed=seed,
            on_epoch=lambda loss: progress.update(task, advance=1, loss=loss),
        )


def choose_served(reports: Reports, lat: dict[str, Latency]) -> tuple[str, str]:
    """int8 if it is faster and within INT8_MAX_F1_LOSS CV macro-F1; and why."""
    cv, cv_int8 = reports.cv, reports.int8
    int8_ok = cv_int8["macro_f1"] >= cv["macro_f1"] - INT8_MAX_F1_LOSS
    int8_faster = lat["int8"].p50_us < lat["fp32"].p50_us
    served = "int8" if int8_ok and int8_faster else "fp32"
    reasons = [
        "int8 is faster" if int8_faster else "int8 is not faster",
        (
            "within 1 pp macro-F1"
            if int8_ok
            else f"int8 loses {100 * (cv['macro_f1'] - cv_int8['macro_f1']):.1f} pp CV macro-F1"
        ),
    ]
    return served, "; ".join(reasons)


@dataclass(frozen=True)
class Shipped:
    """The all-days model's files: parity with torch, all-days scores, latency, sizes,
    and the variant served (with the reason)."""

    parity: float
    scores: dict[str, float]
    latency: dict[str, Latency]
    sizes: dict[str, int]
    served: str
    reason: str


def check_shipped(
    model: RoutineNet, out: Path, home: Dataset, other: Dataset, reports: Reports
) -> Shipped:
    with torch.no_grad():
        ref = model(torch.from_numpy(home.x)).numpy()
    onnx_out = run(out / FP32_FILE, home.x, INPUT_NAME, OUTPUT_NAME)
    parity = check_parity(onnx_out, ref, PARITY_TOLERANCE, relative=False)
    scores = score_variants(out, FILES, home, other, input_name=INPUT_NAME, output_name=OUTPUT_NAME)
    lat = latencies(out, FILES, home.x[len(home) // 2], INPUT_NAME)
    sizes = file_sizes(out, FILES)
    served, reason = choose_served(reports, lat)
    for k, size in sizes.items():
        if size > MAX_ARTIFACT_BYTES:
            raise RuntimeError(f"{FILES[k]} is {size} bytes (> {MAX_ARTIFACT_BYTES})")
    return Shipped(parity, scores, lat, sizes, served, reason)


def _r6(v: float) -> float:
    return round(float(v), 6)


def cv_metrics(reports: Reports) -> dict[str, float]:
    """The cross-validated metrics: per class, per variant, baselines, other home."""
    cv, other = reports.cv, reports.other
    metrics: dict[str, float] = {
        "cv_macro_f1": _r6(cv["macro_f1"]),
        "cv_accuracy": _r6(cv["accuracy"]),
    }
    for c in CLASSES:
        for kind in ("precision", "recall", "f1"):
            metrics[f"cv_{kind}_{c}"] = _r6(cv[f"{kind}_{c}"])
        metrics[f"support_{c}"] = cv[f"support_{c}"]
    metrics |= {
        "cv_macro_f1_fp32": _r6(cv["macro_f1"]),
        "cv_accuracy_fp32": _r6(cv["accuracy"]),
        "cv_macro_f1_int8": _r6(reports.int8["macro_f1"]),
        "cv_accuracy_int8": _r6(reports.int8["accuracy"]),
        "baseline_majority_macro_f1": _r6(reports.majority["macro_f1"]),
        "baseline_majority_accuracy": _r6(reports.majority["accuracy"]),
        "baseline_time_of_day_macro_f1": _r6(reports.time_of_day["macro_f1"]),
        "baseline_time_of_day_accuracy": _r6(reports.time_of_day["accuracy"]),
        "other_home_macro_f1": _r6(other["macro_f1"]),
        "other_home_accuracy": _r6(other["accuracy"]),
        "other_home_macro_f1_drop": _r6(cv["macro_f1"] - other["macro_f1"]),
    }
    return metrics | {f"other_home_f1_{c}": _r6(other[f"f1_{c}"]) for c in CLASSES}


def collect_metrics(
    reports: Reports, shipped: Shipped, *, n_params: int, hp: Hyper, seed: int, slices: int
) -> dict[str, float]:
    """Every metric of the manifest (in the order they have always been written)."""
    metrics = cv_metrics(reports) | shipped.scores
    for k in FILES:
        metrics[f"size_bytes_{k}"] = float(shipped.sizes[k])
        metrics[f"latency_p50_us_{k}"] = round(shipped.latency[k].p50_us, 1)
        metrics[f"latency_p99_us_{k}"] = round(shipped.latency[k].p99_us, 1)
    return metrics | {
        "params": float(n_params),
        "served_int8": 1.0 if shipped.served == "int8" else 0.0,
        "onnx_parity_max_abs_diff": float(f"{shipped.parity:.3e}"),
        "n_folds": float(hp.n_folds),
        "epochs": float(hp.epochs),
        "seed": float(seed),
        "slices": float(slices),
    }


def build_manifest(
    out: Path, served: str, home: Dataset, data: KasterenData, metrics: dict[str, float]
) -> Manifest:
    shipped = variants(out, FILES)
    return Manifest(
        name=NAME,
        version=VERSION,
        task_kind="classification",
        file=shipped[served].file,
        sha256=shipped[served].sha256,
        input=InputSchema.float32(INPUT_NAME, INPUT_SHAPE, FEATURE_NAMES, FEATURE_UNITS),
        output_name=OUTPUT_NAME,
        output_labels=CLASSES,
        feature_spec=SPEC_ID,
        baseline=feature_baseline(home.x),
        training_data_sha256=data.sha256,
        reference=reference_histograms(home.x, FEATURE_NAMES),
        metrics=metrics,
        description=(
            "Current activity (away, asleep, toilet, shower, breakfast, dinner, drink, idle) "
            "from home-agnostic binary sensor features (area and sensor kind); trained on "
            "van Kasteren 2008."
        ),
        variants=shipped,
    )


def plot_cv_confusion(y: I64Array, res: CvResult, reports: Reports, path: Path) -> None:
    plot_confusion(
        [
            (
                f"leave-days-out CV, held-out days (macro-F1 {reports.cv['macro_f1']:.3f})",
                confusion(y, res.fp32),
            ),
            (
                f"other home, same fold models (macro-F1 {reports.other['macro_f1']:.3f})",
                confusion(y, res.other_fp32),
            ),
        ],
        path,
    )


def class_table(title: str, reports: Reports) -> Table:
    cv, other = reports.cv, reports.other
    table = Table(title=title)
    table.add_column("class")
    for column in ("slices", "precision", "recall", "F1 (CV)", "F1 other home"):
        table.add_column(column, justify="right")
    for c in CLASSES:
        table.add_row(
            c,
            str(int(cv[f"support_{c}"])),
            f"{cv[f'precision_{c}']:.3f}",
            f"{cv[f'recall_{c}']:.3f}",
            f"{cv[f'f1_{c}']:.3f}",
            f"{other[f'f1_{c}']:.3f}",
        )
    return table


def summary_table(reports: Reports, shipped: Shipped, n_params: int, elapsed: float) -> Table:
    cv, sizes, lat = reports.cv, shipped.sizes, shipped.latency
    summary = Table(show_header=False)
    for key, value in (
        ("CV macro-F1 fp32 / int8", f"{cv['macro_f1']:.4f} / {reports.int8['macro_f1']:.4f}"),
        ("CV accuracy", f"{cv['accuracy']:.4f}"),
        (
            "baseline macro-F1 time-of-day / majority",
            f"{reports.time_of_day['macro_f1']:.4f} / {reports.majority['macro_f1']:.4f}",
        ),
        ("other home macro-F1 (CV)", f"{reports.other['macro_f1']:.4f}"),
        ("parameters", str(n_params)),
        ("size fp32 / int8", f"{sizes['fp32']} / {sizes['int8']} bytes"),
        ("latency p50 fp32 / int8", f"{lat['fp32'].p50_us:.1f} / {lat['int8'].p50_us:.1f} µs"),
        ("served", f"{shipped.served} ({shipped.reason})"),
        ("wall time", f"{elapsed:.1f} s"),
    ):
        summary.add_row(key, value)
    return summary


def main(argv: list[str] | None = None) -> int:
    figure = PathOption("--figure", FIGURE, "confusion matrix PNG")
    args = recipe_parser(__doc__, NAME, Hyper.epochs, figure).parse_args(argv)
    # onnxruntime's quantizer logs every unquantized tensor through the root logger.
    rich_logging(drop_from="onnxruntime")
    console = Console()
    started = time.perf_counter()
    make_deterministic()

    data = load_or_report(
        lambda: load_kasteren(find_data_dir(args.data_dir)),
        "[red]error:[/] van Kasteren data not available:",
        console,
    )
    if data is None:
        return 2
    home, other = load_homes(data)

    hp = Hyper(epochs=args.epochs)
    cv_res = cross_validate(home, other, hp=hp, seed=args.seed)
    reports = cv_reports(home.y, cv_res)

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    model = fit_all_days(home, hp, args.seed)
    export(model, out / FP32_FILE, out / INT8_FILE)
    n_params = param_count(model)
    shipped = check_shipped(model, out, home, other, reports)

    metrics = collect_metrics(
        reports, shipped, n_params=n_params, hp=hp, seed=args.seed, slices=len(home)
    )
    manifest = build_manifest(out, shipped.served, home, data, metrics)
    card = CardContext(
        data=data,
        home=home,
        hp=hp,
        cv=reports.cv,
        other_cv=reports.other,
        baseline_tod=reports.time_of_day,
        served=shipped.served,
        served_reason=shipped.reason,
        int8_max_f1_loss=INT8_MAX_F1_LOSS,
    )
    write_artifacts(out, manifest, model_card(manifest, card))
    plot_cv_confusion(home.y, cv_res, reports, args.figure)
    elapsed = time.perf_counter() - started

    console.print(class_table(f"{NAME} {VERSION} -> {out}", reports))
    console.print(summary_table(reports, shipped, n_params, elapsed))
    if reports.cv["macro_f1"] < reports.time_of_day["macro_f1"] + MIN_GAIN_OVER_BASELINE:
        log.error(
            "CV macro-F1 does not beat the time-of-day baseline by %.2f", MIN_GAIN_OVER_BASELINE
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
