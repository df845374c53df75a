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

import argparse
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from models.datasets import REPO_ROOT, DatasetMissing, add_data_dir_argument, find_data_dir
from models.export import export_onnx, latency, quantize_int8, run
from models.manifest import (
    InputSchema,
    Manifest,
    Variant,
    sha256_file,
    shipped_models_dir,
)
from models.reference import reference_histograms
from models.routine.card import CardContext, model_card
from models.routine.data import (
    CLASSES,
    Dataset,
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
    example = torch.zeros(2, *INPUT_SHAPE, dtype=torch.float32)
    export_onnx(
        model,
        example,
        fp32,
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        doc=f"Roost {NAME} {VERSION}: {SPEC_ID} features -> P(activity)",
    )
    quantize_int8(fp32, int8)


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
    columns = (
        TextColumn("[bold]{task.description:<8}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  {task.fields[info]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns) as progress, tempfile.TemporaryDirectory() as tmp:
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=shipped_models_dir() / NAME)
    parser.add_argument("--epochs", type=int, default=Hyper.epochs)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--figure", type=Path, default=FIGURE, help="confusion matrix PNG")
    add_data_dir_argument(parser)
    args = parser.parse_args(argv)
    handler = RichHandler(show_path=False)
    # onnxruntime's quantizer logs every unquantized tensor through the root logger.
    handler.addFilter(lambda r: "onnxruntime" not in r.pathname)
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[handler])
    console = Console()
    started = time.perf_counter()
    make_deterministic()

    try:
        data = load_kasteren(find_data_dir(args.data_dir))
    except DatasetMissing as e:
        console.print(f"[red]error:[/] van Kasteren data not available: {e}")
        return 2
    home = build_dataset(data)
    other = build_dataset(data, other_home(data))
    if not np.array_equal(home.starts, other.starts):
        raise RuntimeError("the two homes' slices differ")
    log.info(
        "%d slices of 60 s over %d days: %s", len(home), home.days.max() + 1, class_counts(home.y)
    )

    hp = Hyper(epochs=args.epochs)
    cv_res = cross_validate(home, other, hp=hp, seed=args.seed)
    cv = report(home.y, cv_res.fp32)
    cv_int8 = report(home.y, cv_res.int8)
    other_cv = report(home.y, cv_res.other_fp32)
    base_major = report(home.y, cv_res.majority)
    base_tod = report(home.y, cv_res.time_of_day)

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    fp32_path, int8_path = out / FP32_FILE, out / INT8_FILE
    with Progress(
        TextColumn("[bold]{task.description:<8}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeElapsedColumn(),
    ) as progress:
        task = progress.add_task("all days", total=hp.epochs, loss=float("nan"))
        model = fit(
            home.x,
            home.y,
            hp=hp,
            seed=args.seed,
            on_epoch=lambda loss: progress.update(task, advance=1, loss=loss),
        )
    export(model, fp32_path, int8_path)
    n_params = param_count(model)

    with torch.no_grad():
        ref = model(torch.from_numpy(home.x)).numpy()
    parity = float(np.max(np.abs(run(fp32_path, home.x, INPUT_NAME, OUTPUT_NAME) - ref)))
    if parity >= PARITY_TOLERANCE:
        raise RuntimeError(f"torch vs onnxruntime max abs diff {parity:.2e} >= {PARITY_TOLERANCE}")

    files = {"fp32": FP32_FILE, "int8": INT8_FILE}
    alldays = score_variants(
        out, files, home, other, input_name=INPUT_NAME, output_name=OUTPUT_NAME
    )
    row = home.x[len(home) // 2]
    lat = {k: latency(out / f, row, INPUT_NAME) for k, f in files.items()}
    sizes = {k: (out / f).stat().st_size for k, f in files.items()}
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
    reason = "; ".join(reasons)
    for k, size in sizes.items():
        if size > MAX_ARTIFACT_BYTES:
            raise RuntimeError(f"{files[k]} is {size} bytes (> {MAX_ARTIFACT_BYTES})")

    r6: Callable[[float], float] = lambda v: round(float(v), 6)  # noqa: E731
    metrics: dict[str, float] = {
        "cv_macro_f1": r6(cv["macro_f1"]),
        "cv_accuracy": r6(cv["accuracy"]),
    }
    for c in CLASSES:
        for kind in ("precision", "recall", "f1"):
            metrics[f"cv_{kind}_{c}"] = r6(cv[f"{kind}_{c}"])
        metrics[f"support_{c}"] = cv[f"support_{c}"]
    metrics |= {
        "cv_macro_f1_fp32": r6(cv["macro_f1"]),
        "cv_accuracy_fp32": r6(cv["accuracy"]),
        "cv_macro_f1_int8": r6(cv_int8["macro_f1"]),
        "cv_accuracy_int8": r6(cv_int8["accuracy"]),
        "baseline_majority_macro_f1": r6(base_major["macro_f1"]),
        "baseline_majority_accuracy": r6(base_major["accuracy"]),
        "baseline_time_of_day_macro_f1": r6(base_tod["macro_f1"]),
        "baseline_time_of_day_accuracy": r6(base_tod["accuracy"]),
        "other_home_macro_f1": r6(other_cv["macro_f1"]),
        "other_home_accuracy": r6(other_cv["accuracy"]),
        "other_home_macro_f1_drop": r6(cv["macro_f1"] - other_cv["macro_f1"]),
    }
    metrics |= {f"other_home_f1_{c}": r6(other_cv[f"f1_{c}"]) for c in CLASSES}
    metrics |= alldays
    for k in files:
        metrics[f"size_bytes_{k}"] = float(sizes[k])
        metrics[f"latency_p50_us_{k}"] = round(lat[k].p50_us, 1)
        metrics[f"latency_p99_us_{k}"] = round(lat[k].p99_us, 1)
    metrics |= {
        "params": float(n_params),
        "served_int8": 1.0 if served == "int8" else 0.0,
        "onnx_parity_max_abs_diff": float(f"{parity:.3e}"),
        "n_folds": float(hp.n_folds),
        "epochs": float(hp.epochs),
        "seed": float(args.seed),
        "slices": float(len(home)),
    }

    variants = {
        k: Variant(file=f, sha256=sha256_file(out / f), size_bytes=sizes[k])
        for k, f in files.items()
    }
    manifest = Manifest(
        name=NAME,
        version=VERSION,
        task_kind="classification",
        file=variants[served].file,
        sha256=variants[served].sha256,
        input=InputSchema.float32(INPUT_NAME, INPUT_SHAPE, FEATURE_NAMES, FEATURE_UNITS),
        output_name=OUTPUT_NAME,
        output_labels=CLASSES,
        feature_spec=SPEC_ID,
        baseline=tuple(round(float(v), 6) for v in home.x.mean(axis=0, dtype=np.float64)),
        training_data_sha256=data.sha256,
        reference=reference_histograms(home.x, FEATURE_NAMES),
        metrics=metrics,
        description=(
            "Current activity (away, asleep, toilet, shower, breakfast, dinner, drink, idle) "
            "from home-agnostic binary sensor features (area and sensor kind); trained on "
            "van Kasteren 2008."
        ),
        variants=variants,
    )
    (out / "manifest.json").write_text(manifest.to_json())
    card = CardContext(
        data=data,
        home=home,
        hp=hp,
        cv=cv,
        other_cv=other_cv,
        baseline_tod=base_tod,
        served=served,
        served_reason=reason,
        int8_max_f1_loss=INT8_MAX_F1_LOSS,
    )
    (out / "MODEL_CARD.md").write_text(model_card(manifest, card))
    plot_confusion(
        [
            (
                f"leave-days-out CV, held-out days (macro-F1 {cv['macro_f1']:.3f})",
                confusion(home.y, cv_res.fp32),
            ),
            (
                f"other home, same fold models (macro-F1 {other_cv['macro_f1']:.3f})",
                confusion(home.y, cv_res.other_fp32),
            ),
        ],
        args.figure,
    )
    elapsed = time.perf_counter() - started

    table = Table(title=f"{NAME} {VERSION} -> {out}")
    table.add_column("class")
    table.add_column("slices", justify="right")
    table.add_column("precision", justify="right")
    table.add_column("recall", justify="right")
    table.add_column("F1 (CV)", justify="right")
    table.add_column("F1 other home", justify="right")
    for c in CLASSES:
        table.add_row(
            c,
            str(int(cv[f"support_{c}"])),
            f"{cv[f'precision_{c}']:.3f}",
            f"{cv[f'recall_{c}']:.3f}",
            f"{cv[f'f1_{c}']:.3f}",
            f"{other_cv[f'f1_{c}']:.3f}",
        )
    console.print(table)
    summary = Table(show_header=False)
    for key, value in (
        ("CV macro-F1 fp32 / int8", f"{cv['macro_f1']:.4f} / {cv_int8['macro_f1']:.4f}"),
        ("CV accuracy", f"{cv['accuracy']:.4f}"),
        (
            "baseline macro-F1 time-of-day / majority",
            f"{base_tod['macro_f1']:.4f} / {base_major['macro_f1']:.4f}",
        ),
        ("other home macro-F1 (CV)", f"{other_cv['macro_f1']:.4f}"),
        ("parameters", str(n_params)),
        ("size fp32 / int8", f"{sizes['fp32']} / {sizes['int8']} bytes"),
        ("latency p50 fp32 / int8", f"{lat['fp32'].p50_us:.1f} / {lat['int8'].p50_us:.1f} µs"),
        ("served", f"{served} ({reason})"),
        ("wall time", f"{elapsed:.1f} s"),
    ):
        summary.add_row(key, value)
    console.print(summary)
    if cv["macro_f1"] < base_tod["macro_f1"] + MIN_GAIN_OVER_BASELINE:
        log.error(
            "CV macro-F1 does not beat the time-of-day baseline by %.2f", MIN_GAIN_OVER_BASELINE
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
