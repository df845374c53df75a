"""Train the room occupancy classifier and ship it as an ONNX artifact.

Run from the repository root::

    python -m models.occupancy.train [--out models/artifacts/occupancy] [--epochs N] [--seed 0]
        [--data-dir ../shared/data]

Features are built row by row with :func:`models.features.snapshot` on
:data:`models.features.OCCUPANCY_V1`, the same code path the hub uses when serving.
The model trains on UCI Occupancy ``datatraining.txt`` only (a run on its first 80 %
scored on its chronologically last 20 % measures day-to-day drift first) and is
evaluated on ``datatest.txt`` with the exported ONNX in onnxruntime. Clamping to the
training range and standardization are baked into the graph, so the artifact takes
raw physical-unit features and returns softmax probabilities.

The recipe and its CLI; the network is :mod:`models.occupancy.net`, the model card
:mod:`models.occupancy.card`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from models.datasets import OccupancyData, find_data_dir, load_occupancy, occupancy_path
from models.export import Latency, serve_int8, session
from models.features import OCCUPANCY_V1
from models.manifest import InputSchema, Manifest
from models.occupancy.card import CardContext, model_card
from models.occupancy.data import build_features
from models.occupancy.evaluate import binary_metrics
from models.occupancy.net import LABELS, OccupancyNet, class_weights
from models.recipe import (
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
from models.training import make_deterministic, param_count, train_epoch

log = logging.getLogger("models.occupancy.train")

NAME = "occupancy"
VERSION = "1.0.0"
ONNX_FILE = "occupancy.onnx"
INT8_FILE = "occupancy.int8.onnx"
FILES = {"fp32": ONNX_FILE, "int8": INT8_FILE}
# int8 is served only if it is faster and loses at most this much accuracy.
INT8_MAX_ACCURACY_LOSS = 0.005
INPUT_NAME = "features"
OUTPUT_NAME = "probabilities"
PARITY_TOLERANCE = 1e-5
ACCURACY_FLOOR = 0.97

F32Array = npt.NDArray[np.float32]
I64Array = npt.NDArray[np.int64]


# --- Training --------------------------------------------------------------------------


@dataclass(frozen=True)
class Hyper:
    epochs: int = 30
    batch_size: int = 128
    lr: float = 3e-3
    # Decay on the standardized inputs keeps the MLP from leaning on CO2/humidity,
    # which drift between days (CO2 lingers after a room is left).
    weight_decay: float = 3e-2
    # The chronologically last part of datatraining.txt: drift diagnostic only.
    holdout_fraction: float = 0.2


@dataclass(frozen=True)
class TrainResult:
    model: OccupancyNet
    holdout_accuracy: float
    holdout_false_occupied: int
    holdout_false_vacant: int
    holdout_start_ts: float


def _fit(
    x: F32Array,
    y: I64Array,
    *,
    hp: Hyper,
    seed: int,
    on_epoch: Callable[[OccupancyNet, float], None],
) -> OccupancyNet:
    """Train a fresh, seeded model for ``hp.epochs`` epochs of shuffled minibatches."""
    torch.manual_seed(seed)
    model = OccupancyNet(x)
    loss_fn = nn.CrossEntropyLoss(weight=class_weights(y))
    opt = torch.optim.Adam(model.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(hp.epochs):
        mean = train_epoch(
            model,
            opt,
            len(xt),
            batch_size=hp.batch_size,
            gen=gen,
            batch_loss=lambda b: loss_fn(model.logits(xt[b]), yt[b]),
        )
        model.eval()
        on_epoch(model, mean)
    return model


def train(
    x: F32Array, y: I64Array, ts: npt.NDArray[np.float64], *, hp: Hyper, seed: int
) -> TrainResult:
    """Train the shipped model on all rows, after a chronological hold-out check.

    Rows must be in time order (``ts``). The hold-out run trains on the first
    ``1 - holdout_fraction`` of the rows and scores the later days: a measure of
    day-to-day drift (a random split would only interpolate between neighbouring
    minutes). The shipped model is then trained from the same seed on all rows.
    """
    if np.any(np.diff(ts) < 0):
        raise ValueError("training rows are not in time order")
    cut = round(len(x) * (1.0 - hp.holdout_fraction))
    if not 0 < cut < len(x):
        raise ValueError(f"holdout_fraction {hp.holdout_fraction} leaves no rows on one side")
    x_hold, y_hold = torch.from_numpy(x[cut:]), torch.from_numpy(y[cut:])
    holdout_pred = torch.zeros_like(y_hold)
    stats = "loss {task.fields[loss]:.4f}  {task.fields[info]}"
    with training_progress("{task.description:<7}", stats) as progress:
        check = progress.add_task("holdout", total=hp.epochs, loss=float("nan"), info="")

        def on_check_epoch(model: OccupancyNet, loss: float) -> None:
            nonlocal holdout_pred
            with torch.no_grad():
                holdout_pred = model.logits(x_hold).argmax(dim=1)
            acc = float((holdout_pred == y_hold).float().mean().item())
            progress.update(check, advance=1, loss=loss, info=f"later-days acc {acc:.4f}")

        _fit(x[:cut], y[:cut], hp=hp, seed=seed, on_epoch=on_check_epoch)
        final = progress.add_task("train", total=hp.epochs, loss=float("nan"), info="all rows")

        def on_final_epoch(model: OccupancyNet, loss: float) -> None:
            progress.update(final, advance=1, loss=loss)

        model = _fit(x, y, hp=hp, seed=seed, on_epoch=on_final_epoch)
    pred, true = holdout_pred.numpy(), y[cut:]
    result = TrainResult(
        model=model,
        holdout_accuracy=float(np.mean(pred == true)),
        holdout_false_occupied=int(np.sum((pred == 1) & (true == 0))),
        holdout_false_vacant=int(np.sum((pred == 0) & (true == 1))),
        holdout_start_ts=float(ts[cut]),
    )
    log.info(
        "chronological hold-out (last %d rows, trained on the first %d): accuracy %.4f",
        len(x) - cut,
        cut,
        result.holdout_accuracy,
    )
    return result


# --- Export and evaluation -------------------------------------------------------------


def onnx_predict(path: Path, x: F32Array) -> F32Array:
    (out,) = session(path).run([OUTPUT_NAME], {INPUT_NAME: x})
    return np.asarray(out, dtype=np.float32)


def fit_light_threshold(light: npt.NDArray[np.float64], y: I64Array) -> float:
    """The illuminance threshold (lx) that best separates the training rows: a baseline."""
    candidates = np.unique(light)
    accs = [float(np.mean((light > c) == y)) for c in candidates]
    return float(candidates[int(np.argmax(accs))])


# --- Main ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scores:
    """The exported variants on ``datatest.txt`` (onnxruntime) and the variant served."""

    parity: float
    test: dict[str, float]
    int8_test: dict[str, float]
    latency: dict[str, Latency]
    sizes: dict[str, int]
    served: str


def _test_metrics(path: Path, x: F32Array, y: I64Array) -> dict[str, float]:
    return binary_metrics(y, onnx_predict(path, x).argmax(axis=1).astype(np.int64))


def score(model: OccupancyNet, out: Path, x_test: F32Array, y_test: I64Array) -> Scores:
    """Parity of the fp32 file with torch, both variants' test metrics and latency, and
    the int8 rule (:func:`models.export.serve_int8`)."""
    probs = onnx_predict(out / ONNX_FILE, x_test)
    with torch.no_grad():
        ref = model(torch.from_numpy(x_test)).numpy()
    parity = check_parity(probs, ref, PARITY_TOLERANCE, relative=False)
    test = binary_metrics(y_test, probs.argmax(axis=1).astype(np.int64))
    if test["accuracy"] < ACCURACY_FLOOR:
        log.error(
            "test accuracy %.4f is below the %.2f floor; artifact written to %s anyway",
            test["accuracy"],
            ACCURACY_FLOOR,
            out,
        )
    sizes = file_sizes(out, FILES)
    int8_test = _test_metrics(out / INT8_FILE, x_test, y_test)
    lat = latencies(out, FILES, x_test[0], INPUT_NAME)
    loss = test["accuracy"] - int8_test["accuracy"]
    int8_served = serve_int8(sizes["fp32"], sizes["int8"], loss, INT8_MAX_ACCURACY_LOSS)
    served = "int8" if int8_served else "fp32"
    return Scores(parity, test, int8_test, lat, sizes, served)


def light_rule(train_data: OccupancyData, test_data: OccupancyData, hp: Hyper) -> dict[str, float]:
    """The illuminance-threshold baseline, on the test days and on the hold-out days."""
    y_train = train_data.occupancy.astype(np.int64)
    threshold = fit_light_threshold(train_data.light, y_train)
    test_acc = float(np.mean((test_data.light > threshold) == test_data.occupancy))
    cut = round(len(train_data) * (1.0 - hp.holdout_fraction))
    early_threshold = fit_light_threshold(train_data.light[:cut], y_train[:cut])
    holdout_acc = float(np.mean((train_data.light[cut:] > early_threshold) == y_train[cut:]))
    return {
        "light_rule_threshold_lx": threshold,
        "light_rule_test_accuracy": round(test_acc, 6),
        "light_rule_holdout_accuracy": round(holdout_acc, 6),
    }


def collect_metrics(
    scores: Scores,
    result: TrainResult,
    light: dict[str, float],
    *,
    hp: Hyper,
    seed: int,
    rows: tuple[int, int],
) -> dict[str, float]:
    """The manifest's metrics (in the order they have always been written)."""
    metrics = {f"test_{k}": round(v, 6) for k, v in scores.test.items()}
    metrics |= {
        "test_accuracy_int8": round(scores.int8_test["accuracy"], 6),
        "test_f1_int8": round(scores.int8_test["f1"], 6),
        "size_bytes_int8": float(scores.sizes["int8"]),
        "latency_p50_us_fp32": round(scores.latency["fp32"].p50_us, 1),
        "latency_p50_us_int8": round(scores.latency["int8"].p50_us, 1),
    }
    return metrics | {
        "params": float(param_count(result.model)),
        "onnx_size_bytes": float(scores.sizes["fp32"]),
        "onnx_parity_max_abs_diff": float(f"{scores.parity:.3e}"),
        "holdout_accuracy": round(result.holdout_accuracy, 6),
        "holdout_false_occupied": float(result.holdout_false_occupied),
        "holdout_false_vacant": float(result.holdout_false_vacant),
        **light,
        "holdout_fraction": hp.holdout_fraction,
        "epochs": float(hp.epochs),
        "weight_decay": hp.weight_decay,
        "seed": float(seed),
        "train_rows": float(rows[0]),
        "test_rows": float(rows[1]),
    }


def build_manifest(
    out: Path, served: str, x_train: F32Array, train_data: OccupancyData, metrics: dict[str, float]
) -> Manifest:
    shipped = variants(out, FILES)
    return Manifest(
        name=NAME,
        version=VERSION,
        task_kind="classification",
        file=shipped[served].file,
        sha256=shipped[served].sha256,
        input=InputSchema.float32(
            INPUT_NAME, OCCUPANCY_V1.input_shape, OCCUPANCY_V1.feature_names, OCCUPANCY_V1.units
        ),
        output_name=OUTPUT_NAME,
        output_labels=LABELS,
        feature_spec=OCCUPANCY_V1.spec_id,
        baseline=feature_baseline(x_train),
        reference=reference_histograms(x_train, OCCUPANCY_V1.feature_names),
        training_data_sha256=train_data.sha256,
        metrics=metrics,
        description=(
            "Room occupancy from temperature, humidity, illuminance, CO2 and time of day; "
            "trained on UCI Occupancy Detection (CC BY 4.0)."
        ),
        variants=shipped,
    )


def print_summary(out: Path, scores: Scores, result: TrainResult, elapsed: float) -> None:
    table = Table(title=f"{NAME} {VERSION} -> {out}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in (
        ("test accuracy (onnxruntime fp32)", f"{scores.test['accuracy']:.4f}"),
        ("test F1 (occupied)", f"{scores.test['f1']:.4f}"),
        ("parameters", str(param_count(result.model))),
        ("onnx size", f"{scores.sizes['fp32']} bytes"),
        ("parity max abs diff", f"{scores.parity:.2e}"),
        ("chronological hold-out accuracy", f"{result.holdout_accuracy:.4f}"),
        ("wall time", f"{elapsed:.1f} s"),
    ):
        table.add_row(key, value)
    Console().print(table)


def main(argv: list[str] | None = None) -> int:
    args = recipe_parser(__doc__, NAME, Hyper.epochs).parse_args(argv)
    rich_logging()
    started = time.perf_counter()
    make_deterministic()

    data_dir = find_data_dir(args.data_dir)
    loaded = load_or_report(
        lambda: (load_occupancy("train", data_dir), load_occupancy("test", data_dir)),
        f"[red]cannot train {NAME}:[/]",
    )
    if loaded is None:
        return 2
    train_data, test_data = loaded
    log.info("training rows %d from %s", len(train_data), occupancy_path("train", data_dir))
    x_train, y_train = build_features(train_data), train_data.occupancy.astype(np.int64)
    x_test, y_test = build_features(test_data), test_data.occupancy.astype(np.int64)

    hp = Hyper(epochs=args.epochs)
    result = train(x_train, y_train, train_data.ts, hp=hp, seed=args.seed)

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    export_fp32_int8(
        result.model,
        torch.zeros(2, x_train.shape[1], dtype=torch.float32),
        out / ONNX_FILE,
        out / INT8_FILE,
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        doc=f"Roost {NAME} {VERSION}: raw {OCCUPANCY_V1.spec_id} features -> P(label)",
    )
    scores = score(result.model, out, x_test, y_test)
    light = light_rule(train_data, test_data, hp)
    rows = (len(train_data), len(test_data))
    metrics = collect_metrics(scores, result, light, hp=hp, seed=args.seed, rows=rows)
    manifest = build_manifest(out, scores.served, x_train, train_data, metrics)
    card = CardContext(
        size_bytes=scores.sizes["fp32"],
        train_data=train_data,
        test_data=test_data,
        holdout_start_ts=result.holdout_start_ts,
        holdout_false_occupied=result.holdout_false_occupied,
        holdout_false_vacant=result.holdout_false_vacant,
        int8_max_accuracy_loss=INT8_MAX_ACCURACY_LOSS,
    )
    write_artifacts(out, manifest, model_card(manifest, card))
    print_summary(out, scores, result, time.perf_counter() - started)
    return 0 if scores.test["accuracy"] >= ACCURACY_FLOOR else 1


if __name__ == "__main__":
    raise SystemExit(main())
