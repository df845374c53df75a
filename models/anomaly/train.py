"""Train the appliance energy anomaly model and ship it as ONNX artifacts.

Run from the repository root::

    python -m models.anomaly.train [--out models/artifacts/anomaly] [--epochs N] [--seed 0]
        [--data-dir ../shared/data]

The model learns the appliance energy to expect in a 10-minute step from its context
(time of day, lighting energy, kitchen humidity) and
the last two hours of readings, on the first 60 % of UCI Appliances Energy
Prediction. The served graph turns the observed readings and the learned
expectations into per-fault scores (a load that will not go away, a sudden surge, a
meter reading 0, a meter frozen on one value), each divided by its alert threshold
calibrated on the next 20 % (validation), and their maximum, ``anomaly_score``: the
hub alerts when it reaches 1. The last 20 % is the test period, evaluated with
onnxruntime on copies with injected faults (:mod:`models.anomaly.evaluate`).
Clamping, the log transform and standardization are baked into the graph, so it
takes raw Wh and %.

The recipe and its CLI; the network is :mod:`models.anomaly.net`, the model card
:mod:`models.anomaly.card`.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from models.anomaly.card import CardContext, model_card
from models.anomaly.data import (
    EVENTS_PER_KIND,
    FAULT_KINDS,
    FAULT_SEED,
    MIN_GAP_STEPS,
    ApplianceData,
    inject,
    load_appliances,
    split,
    window_inputs,
)
from models.anomaly.evaluate import (
    DETECTION_KEYS,
    SUMMARY,
    Evaluation,
    calibrate_threshold,
    detection_metrics,
    evaluate_onnx,
    run_onnx,
)
from models.anomaly.net import COMPONENTS, AnomalyNet, F32Array, Hyper
from models.anomaly.spec import (
    ANOMALY_SCORE,
    ANOMALY_THRESHOLD,
    ANOMALY_V1,
    ENERGY,
    EXPECTED_WH,
    OUTPUT_LABELS,
)
from models.datasets import (
    REPO_ROOT,
    DatasetMissing,
    add_data_dir_argument,
    appliances_path,
    find_data_dir,
)
from models.export import export_onnx, latency, quantize_int8
from models.manifest import (
    InputSchema,
    Manifest,
    Variant,
    sha256_file,
    shipped_models_dir,
)
from models.reference import reference_histograms
from models.training import make_deterministic, param_count

log = logging.getLogger("models.anomaly.train")

NAME = "anomaly"
VERSION = "1.0.0"
INPUT_NAME = "features"
OUTPUT_NAME = "outputs"
FILES = {"fp32": "anomaly.onnx", "int8": "anomaly.int8.onnx"}
DEFAULT_PLOT = REPO_ROOT / "docs" / "img" / "anomaly_faults.png"
PARITY_RTOL = 1e-4
# int8 is served only if its p50 latency is below this fraction of fp32's (a margin,
# so a noisy timing cannot flip the choice between two rebuilds) ...
INT8_SPEEDUP = 0.95
# ... and its recall/precision are within this of fp32's (1 percentage point).
INT8_MAX_DROP = 0.01

# --- Training and calibration ----------------------------------------------------------


def _pinball(pred: torch.Tensor, y: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    d = y[:, None] - pred
    return torch.maximum(levels * d, (levels - 1.0) * d).mean()


def fit(x: F32Array, hp: Hyper, seed: int, progress: Progress) -> AnomalyNet:
    """Quantile (pinball) loss for the quantile net plus L1 (median) for the context net,
    on the current step of each training window; shuffled minibatches, Adam."""
    torch.manual_seed(seed)
    model = AnomalyNet(x, hp)
    opt = torch.optim.Adam(model.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    xt = torch.from_numpy(x)
    yt = torch.log1p(xt[:, -1, ENERGY])
    task = progress.add_task("train", total=hp.epochs, loss=float("nan"))
    for _ in range(hp.epochs):
        model.train()
        order = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for start in range(0, len(order), hp.batch_size):
            batch = order[start : start + hp.batch_size]
            xb, yb = xt[batch], yt[batch]
            opt.zero_grad()
            loss = _pinball(model.quantiles(xb), yb, model.quantile_levels)
            loss = loss + torch.abs(model.context_median(xb[:, -1, :]) - yb).mean()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            total += float(loss.item()) * len(batch)
        model.eval()
        progress.update(task, advance=1, loss=total / len(xt))
    return model


def calibrate(model: AnomalyNet, x_val: F32Array, hp: Hyper) -> dict[str, float]:
    """Each component's threshold from its false-alarm budget on the clean validation
    period; written into ``model.tau``."""
    with torch.no_grad():
        _, raw = model.raw_scores(torch.from_numpy(x_val))
    raw64 = raw.numpy().astype(np.float64)
    taus: dict[str, float] = {}
    for j, name in enumerate(COMPONENTS):
        tau = calibrate_threshold(raw64[:, j], getattr(hp, f"budget_{name}"))
        if tau <= 0:
            raise RuntimeError(f"threshold of {name} is {tau:g}; scores need a positive one")
        taus[name] = tau
    model.tau.copy_(torch.tensor([taus[c] for c in COMPONENTS], dtype=torch.float32))
    return taus


def validation_faults(path: Path, data: ApplianceData, seed: int) -> dict[str, float]:
    """Detection on faulted copies of the validation period (a design diagnostic: the
    thresholds came from the clean validation period, the faults never)."""
    start, stop = split(len(data)).validation
    clean = run_onnx(path, window_inputs(data, start, stop))[:, ANOMALY_SCORE]
    alerts = {}
    events = {}
    for kind in FAULT_KINDS:
        energy, evs = inject(data.energy, kind, start, stop, seed=seed + 1)
        out = run_onnx(path, window_inputs(data, start, stop, energy))
        alerts[kind] = out[:, ANOMALY_SCORE] >= ANOMALY_THRESHOLD
        events[kind] = evs
    return detection_metrics(clean >= ANOMALY_THRESHOLD, alerts, events, offset=start)


# --- Plot ------------------------------------------------------------------------------


def plot_faults(ev: Evaluation, data: ApplianceData, path: Path, variant: str) -> None:
    """One example event per fault kind: observed vs clean vs expected energy, and the score."""
    import matplotlib as mpl  # noqa: PLC0415 - optional, only for the docs figure

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(len(FAULT_KINDS), 1, figsize=(9, 2.6 * len(FAULT_KINDS)))
    for ax, kind in zip(axes, FAULT_KINDS, strict=True):
        run = ev.faults[kind]
        lengths = [e.steps for e in run.events]
        target = float(np.median(lengths))
        event = min(run.events, key=lambda e: (abs(e.steps - target), e.start))
        a = max(event.start - 2 * MIN_GAP_STEPS // 3, ev.test_start)
        b = min(event.stop + MIN_GAP_STEPS, ev.test_start + len(run.outputs))
        hours = (np.arange(a, b) - event.start) / 6.0
        rows = slice(a - ev.test_start, b - ev.test_start)
        ax.plot(hours, data.energy[a:b], color="0.6", ls=":", label="clean reading")
        ax.plot(hours, run.energy[a:b], color="C0", label="observed (faulted)")
        ax.plot(hours, run.outputs[rows, EXPECTED_WH], color="C2", label="expected_wh")
        ax.axvspan(0, event.steps / 6.0, color="C3", alpha=0.12, label="fault")
        ax.set_ylabel("Wh / 10 min")
        ax.set_title(f"{kind}: {event.steps * 10} min, magnitude {event.magnitude:.3g}")
        twin = ax.twinx()
        twin.plot(hours, run.outputs[rows, ANOMALY_SCORE], color="C3", lw=1.2, label="score")
        twin.axhline(ANOMALY_THRESHOLD, color="C3", ls="--", lw=0.8)
        twin.set_ylabel("anomaly_score")
        twin.set_ylim(bottom=0)
    handles = axes[0].get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    fig.legend(handles=handles, loc="upper center", ncols=5, fontsize=8, bbox_to_anchor=(0.5, 0.97))
    axes[-1].set_xlabel("hours from fault start")
    fig.suptitle(f"Roost anomaly {VERSION} ({variant}) on injected faults, test period")
    fig.tight_layout(rect=(0.0, 0.0, 1.0, 0.96))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)


# --- Main ------------------------------------------------------------------------------


def _variant_metrics(ev: Evaluation, variant: str) -> dict[str, float]:
    return {f"{k}_{variant}": round(v, 6) for k, v in ev.metrics.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=shipped_models_dir() / NAME)
    parser.add_argument("--epochs", type=int, default=Hyper.epochs)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--plot", type=Path, default=DEFAULT_PLOT, help="example figure ('' to skip)"
    )
    add_data_dir_argument(parser)
    args = parser.parse_args(argv)
    # Root at WARNING keeps onnxruntime's quantizer quiet; this recipe logs at INFO.
    logging.basicConfig(
        level=logging.WARNING, format="%(message)s", handlers=[RichHandler(show_path=False)]
    )
    log.setLevel(logging.INFO)
    console = Console()
    started = time.perf_counter()
    make_deterministic()
    data_dir = find_data_dir(args.data_dir)
    try:
        data = load_appliances(data_dir)
    except DatasetMissing as e:
        Console(stderr=True).print(f"[red]error:[/] {e}")
        return 2
    log.info("%d rows from %s", len(data), appliances_path(data_dir))
    hp = Hyper(epochs=args.epochs)
    parts = split(len(data))
    x_train = window_inputs(data, *parts.train)
    x_val = window_inputs(data, *parts.validation)
    x_test = window_inputs(data, *parts.test)

    columns = (
        TextColumn("[bold]{task.description:<7}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        model = fit(x_train, hp, args.seed, progress)
    train_seconds = time.perf_counter() - started
    taus = calibrate(model, x_val, hp)
    log.info("thresholds: %s", ", ".join(f"{k} {v:.4g}" for k, v in taus.items()))

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    fp32, int8 = out / FILES["fp32"], out / FILES["int8"]
    example = torch.from_numpy(x_train[:2])
    export_onnx(
        model,
        example,
        fp32,
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        doc=f"Roost {NAME} {VERSION}: raw {ANOMALY_V1.spec_id} window -> {list(OUTPUT_LABELS)}",
    )
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer's advice on pre-processing is noise here
    try:
        quantize_int8(fp32, int8)
    finally:
        root.setLevel(level)

    with torch.no_grad():
        ref = model(torch.from_numpy(x_test)).numpy()
        ctx_pred = torch.expm1(model.context_median(torch.from_numpy(x_test[:, -1, :]))).numpy()
    onnx_out = run_onnx(fp32, x_test, INPUT_NAME)
    parity = float(np.max(np.abs(onnx_out - ref) / np.maximum(1.0, np.abs(ref))))
    if parity >= PARITY_RTOL:
        raise RuntimeError(f"torch vs onnxruntime max rel diff {parity:.2e} >= {PARITY_RTOL}")

    evals = {v: evaluate_onnx(out / f, data, threshold=ANOMALY_THRESHOLD) for v, f in FILES.items()}
    lat = {v: latency(out / f, x_test[0], INPUT_NAME) for v, f in FILES.items()}
    sizes = {v: (out / f).stat().st_size for v, f in FILES.items()}
    mf, mi = evals["fp32"].metrics, evals["int8"].metrics
    close = all(mi[k] >= mf[k] - INT8_MAX_DROP for k in DETECTION_KEYS)
    faster = lat["int8"].p50_us < INT8_SPEEDUP * lat["fp32"].p50_us
    served = "int8" if close and faster else "fp32"
    log.info(
        "int8: p50 %.1f us vs fp32 %.1f us (faster: %s), detection within %.0f pp: %s -> serve %s",
        lat["int8"].p50_us,
        lat["fp32"].p50_us,
        faster,
        INT8_MAX_DROP * 100,
        close,
        served,
    )

    observed = data.energy[parts.test[0] : parts.test[1]]
    val_faults = validation_faults(fp32, data, FAULT_SEED)
    metrics: dict[str, float] = {}
    for v in FILES:
        metrics |= _variant_metrics(evals[v], v)
        metrics |= {
            f"size_bytes_{v}": float(sizes[v]),
            f"latency_p50_us_{v}": round(lat[v].p50_us, 1),
            f"latency_p99_us_{v}": round(lat[v].p99_us, 1),
        }
    # (its clean-period false alarms are the variant metric val_false_alarms_per_day_fp32)
    metrics |= {
        f"val_{k}_fp32": round(v, 6) for k, v in val_faults.items() if k != "false_alarms_per_day"
    }
    metrics |= {f"threshold_{c}": round(t, 6) for c, t in taus.items()}
    metrics |= {
        "anomaly_threshold": ANOMALY_THRESHOLD,
        "test_mae_wh_persistence": round(
            float(np.mean(np.abs(data.energy[parts.test[0] - 1 : parts.test[1] - 1] - observed))),
            6,
        ),
        "test_mae_wh_train_median": round(
            float(np.mean(np.abs(np.median(x_train[:, -1, ENERGY]) - observed))), 6
        ),
        "test_mae_wh_context_fp32": round(float(np.mean(np.abs(ctx_pred - observed))), 6),
        "onnx_parity_max_rel_diff": float(f"{parity:.3e}"),
        "params": float(param_count(model)),
        "epochs": float(hp.epochs),
        "seed": float(args.seed),
        "fault_seed": float(FAULT_SEED),
        "events_per_kind": float(EVENTS_PER_KIND),
        "train_windows": float(len(x_train)),
        "validation_windows": float(len(x_val)),
        "test_windows": float(len(x_test)),
        "train_seconds": round(train_seconds, 1),
    }
    metrics |= {
        f"budget_{f.name.removeprefix('budget_')}_per_day": float(getattr(hp, f.name))
        for f in fields(hp)
        if f.name.startswith("budget_")
    }
    variants = {
        v: Variant(file=f, sha256=sha256_file(out / f), size_bytes=sizes[v])
        for v, f in FILES.items()
    }
    manifest = Manifest(
        name=NAME,
        version=VERSION,
        task_kind="regression",
        file=variants[served].file,
        sha256=variants[served].sha256,
        input=InputSchema.float32(
            INPUT_NAME, ANOMALY_V1.input_shape, ANOMALY_V1.feature_names, ANOMALY_V1.units
        ),
        output_name=OUTPUT_NAME,
        output_labels=OUTPUT_LABELS,
        feature_spec=ANOMALY_V1.spec_id,
        baseline=tuple(round(float(v), 6) for v in x_train.mean(axis=0, dtype=np.float64).ravel()),
        training_data_sha256=data.sha256,
        reference=reference_histograms(x_train, ANOMALY_V1.feature_names),
        metrics=dict(sorted(metrics.items())),
        description=(
            "Appliance energy anomalies (stuck-on load, surge, meter dropout or frozen) from "
            "two hours of energy readings and context; trained on UCI Appliances Energy "
            "Prediction (CC BY 4.0). Alert when anomaly_score >= metrics.anomaly_threshold."
        ),
        variants=variants,
    )
    (out / "manifest.json").write_text(manifest.to_json())
    card = CardContext(
        data=data, hp=hp, served=served, int8_speedup=INT8_SPEEDUP, int8_max_drop=INT8_MAX_DROP
    )
    (out / "MODEL_CARD.md").write_text(model_card(manifest, card))
    if str(args.plot) not in ("", "."):
        plot_faults(evals[served], data, args.plot, served)
        log.info("figure: %s", args.plot)
    elapsed = time.perf_counter() - started

    table = Table(title=f"{NAME} {VERSION} -> {out} (served: {served})")
    table.add_column("fault")
    for v in FILES:
        table.add_column(f"recall {v}", justify="right")
        table.add_column(f"precision {v}", justify="right")
        table.add_column(f"TTD {v}", justify="right")
    for kind in (*FAULT_KINDS, SUMMARY):
        cells = []
        for v in FILES:
            cells += [
                f"{metrics[f'recall_{kind}_{v}']:.3f}",
                f"{metrics[f'precision_{kind}_{v}']:.3f}",
                f"{metrics[f'ttd_median_min_{kind}_{v}']:.0f} min",
            ]
        table.add_row(kind, *cells)
    console.print(table)
    summary = Table(show_header=False)
    for v in FILES:
        summary.add_row(
            f"false alarms/day (clean test) {v}", f"{metrics[f'false_alarms_per_day_{v}']:.2f}"
        )
        summary.add_row(f"test MAE {v}", f"{metrics[f'test_mae_wh_{v}']:.2f} Wh")
        summary.add_row(f"size / p50 latency {v}", f"{sizes[v]} B / {lat[v].p50_us:.1f} us")
    summary.add_row("test MAE persistence", f"{metrics['test_mae_wh_persistence']:.2f} Wh")
    summary.add_row(
        "validation faults recall/precision fp32",
        (f"{metrics['val_recall_overall_fp32']:.3f} / {metrics['val_precision_overall_fp32']:.3f}"),
    )
    summary.add_row("parameters", str(param_count(model)))
    summary.add_row("load + fit / total wall time", f"{train_seconds:.1f} s / {elapsed:.1f} s")
    console.print(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
