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

import logging
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from models.anomaly.card import CardContext, model_card
from models.anomaly.data import (
    EVENTS_PER_KIND,
    FAULT_KINDS,
    FAULT_SEED,
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
    plot_faults,
    run_onnx,
)
from models.anomaly.net import COMPONENTS, AnomalyNet, F32Array, Hyper
from models.anomaly.spec import (
    ANOMALY_SCORE,
    ANOMALY_THRESHOLD,
    ANOMALY_V1,
    ENERGY,
    OUTPUT_LABELS,
)
from models.datasets import REPO_ROOT, appliances_path, find_data_dir
from models.export import Latency
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
from models.training import make_deterministic, param_count, train_epoch

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

    def batch_loss(batch: torch.Tensor) -> torch.Tensor:
        xb, yb = xt[batch], yt[batch]
        loss = _pinball(model.quantiles(xb), yb, model.quantile_levels)
        return loss + torch.abs(model.context_median(xb[:, -1, :]) - yb).mean()

    for _ in range(hp.epochs):
        mean = train_epoch(
            model, opt, len(xt), batch_size=hp.batch_size, gen=gen, batch_loss=batch_loss
        )
        model.eval()
        progress.update(task, advance=1, loss=mean)
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


# --- Main ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Windows:
    """The model inputs of the three periods."""

    train: F32Array
    val: F32Array
    test: F32Array


def windows_of(data: ApplianceData) -> Windows:
    parts = split(len(data))
    return Windows(
        train=window_inputs(data, *parts.train),
        val=window_inputs(data, *parts.validation),
        test=window_inputs(data, *parts.test),
    )


@dataclass(frozen=True)
class Fitted:
    """The trained, calibrated model and its run's settings."""

    model: AnomalyNet
    hp: Hyper
    seed: int
    taus: dict[str, float]
    train_seconds: float


@dataclass(frozen=True)
class Checked:
    """The fp32 file against torch, and the context net's test-period expectation (Wh)."""

    parity: float
    context_wh: F32Array


def check_against_torch(model: AnomalyNet, fp32: Path, x_test: F32Array) -> Checked:
    with torch.no_grad():
        ref = model(torch.from_numpy(x_test)).numpy()
        ctx_pred = torch.expm1(model.context_median(torch.from_numpy(x_test[:, -1, :]))).numpy()
    onnx_out = run_onnx(fp32, x_test, INPUT_NAME)
    return Checked(check_parity(onnx_out, ref, PARITY_RTOL, relative=True), ctx_pred)


@dataclass(frozen=True)
class Scored:
    """Both variants on the faulted test period, their latency and size, the served one."""

    evals: dict[str, Evaluation]
    latency: dict[str, Latency]
    sizes: dict[str, int]
    served: str


def choose_served(evals: dict[str, Evaluation], lat: dict[str, Latency]) -> str:
    """int8 if it is clearly faster and detects about as well as fp32."""
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
    return served


def score_variants(out: Path, data: ApplianceData, x_test: F32Array) -> Scored:
    evals = {v: evaluate_onnx(out / f, data, threshold=ANOMALY_THRESHOLD) for v, f in FILES.items()}
    lat = latencies(out, FILES, x_test[0], INPUT_NAME)
    return Scored(evals, lat, file_sizes(out, FILES), choose_served(evals, lat))


def variant_metrics(scored: Scored) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for v in FILES:
        metrics |= {f"{k}_{v}": round(m, 6) for k, m in scored.evals[v].metrics.items()}
        metrics |= {
            f"size_bytes_{v}": float(scored.sizes[v]),
            f"latency_p50_us_{v}": round(scored.latency[v].p50_us, 1),
            f"latency_p99_us_{v}": round(scored.latency[v].p99_us, 1),
        }
    return metrics


def test_maes(data: ApplianceData, x_train: F32Array, context_wh: F32Array) -> dict[str, float]:
    """Test-period MAE of the expectation against two baselines: the previous reading
    (persistence) and the training median."""
    start, stop = split(len(data)).test
    observed = data.energy[start:stop]
    persistence = data.energy[start - 1 : stop - 1]
    median = np.median(x_train[:, -1, ENERGY])
    return {
        "test_mae_wh_persistence": round(float(np.mean(np.abs(persistence - observed))), 6),
        "test_mae_wh_train_median": round(float(np.mean(np.abs(median - observed))), 6),
        "test_mae_wh_context_fp32": round(float(np.mean(np.abs(context_wh - observed))), 6),
    }


def run_metrics(fitted: Fitted, x: Windows, checked: Checked) -> dict[str, float]:
    """The run's settings, sizes, thresholds and false-alarm budgets."""
    hp = fitted.hp
    metrics = {f"threshold_{c}": round(t, 6) for c, t in fitted.taus.items()}
    metrics |= {
        "anomaly_threshold": ANOMALY_THRESHOLD,
        "onnx_parity_max_rel_diff": float(f"{checked.parity:.3e}"),
        "params": float(param_count(fitted.model)),
        "epochs": float(hp.epochs),
        "seed": float(fitted.seed),
        "fault_seed": float(FAULT_SEED),
        "events_per_kind": float(EVENTS_PER_KIND),
        "train_windows": float(len(x.train)),
        "validation_windows": float(len(x.val)),
        "test_windows": float(len(x.test)),
        "train_seconds": round(fitted.train_seconds, 1),
    }
    return metrics | {
        f"budget_{f.name.removeprefix('budget_')}_per_day": float(getattr(hp, f.name))
        for f in fields(hp)
        if f.name.startswith("budget_")
    }


def collect_metrics(
    out: Path, data: ApplianceData, x: Windows, *, fitted: Fitted, checked: Checked, scored: Scored
) -> dict[str, float]:
    """Every metric of the manifest, sorted by name."""
    val_faults = validation_faults(out / FILES["fp32"], data, FAULT_SEED)
    metrics = variant_metrics(scored)
    # (its clean-period false alarms are the variant metric val_false_alarms_per_day_fp32)
    metrics |= {
        f"val_{k}_fp32": round(v, 6) for k, v in val_faults.items() if k != "false_alarms_per_day"
    }
    metrics |= test_maes(data, x.train, checked.context_wh)
    metrics |= run_metrics(fitted, x, checked)
    return dict(sorted(metrics.items()))


def build_manifest(
    out: Path, served: str, x_train: F32Array, data: ApplianceData, metrics: dict[str, float]
) -> Manifest:
    shipped = variants(out, FILES)
    return Manifest(
        name=NAME,
        version=VERSION,
        task_kind="regression",
        file=shipped[served].file,
        sha256=shipped[served].sha256,
        input=InputSchema.float32(
            INPUT_NAME, ANOMALY_V1.input_shape, ANOMALY_V1.feature_names, ANOMALY_V1.units
        ),
        output_name=OUTPUT_NAME,
        output_labels=OUTPUT_LABELS,
        feature_spec=ANOMALY_V1.spec_id,
        baseline=feature_baseline(x_train),
        training_data_sha256=data.sha256,
        reference=reference_histograms(x_train, ANOMALY_V1.feature_names),
        metrics=metrics,
        description=(
            "Appliance energy anomalies (stuck-on load, surge, meter dropout or frozen) from "
            "two hours of energy readings and context; trained on UCI Appliances Energy "
            "Prediction (CC BY 4.0). Alert when anomaly_score >= metrics.anomaly_threshold."
        ),
        variants=shipped,
    )


def fault_table(title: str, metrics: dict[str, float]) -> Table:
    """Recall, precision and time to detect of each fault kind and overall, per variant."""
    table = Table(title=title)
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
    return table


def summary_table(
    metrics: dict[str, float], scored: Scored, fitted: Fitted, elapsed: float
) -> Table:
    summary = Table(show_header=False)
    for v in FILES:
        summary.add_row(
            f"false alarms/day (clean test) {v}", f"{metrics[f'false_alarms_per_day_{v}']:.2f}"
        )
        summary.add_row(f"test MAE {v}", f"{metrics[f'test_mae_wh_{v}']:.2f} Wh")
        summary.add_row(
            f"size / p50 latency {v}", f"{scored.sizes[v]} B / {scored.latency[v].p50_us:.1f} us"
        )
    summary.add_row("test MAE persistence", f"{metrics['test_mae_wh_persistence']:.2f} Wh")
    summary.add_row(
        "validation faults recall/precision fp32",
        (f"{metrics['val_recall_overall_fp32']:.3f} / {metrics['val_precision_overall_fp32']:.3f}"),
    )
    summary.add_row("parameters", str(param_count(fitted.model)))
    summary.add_row(
        "load + fit / total wall time", f"{fitted.train_seconds:.1f} s / {elapsed:.1f} s"
    )
    return summary


def main(argv: list[str] | None = None) -> int:
    plot = PathOption("--plot", DEFAULT_PLOT, "example figure ('' to skip)")
    args = recipe_parser(__doc__, NAME, Hyper.epochs, plot).parse_args(argv)
    # Root at WARNING keeps onnxruntime's quantizer quiet; this recipe logs at INFO.
    rich_logging(logging.WARNING)
    log.setLevel(logging.INFO)
    console = Console()
    started = time.perf_counter()
    make_deterministic()
    data_dir = find_data_dir(args.data_dir)
    data = load_or_report(lambda: load_appliances(data_dir), "[red]error:[/]")
    if data is None:
        return 2
    log.info("%d rows from %s", len(data), appliances_path(data_dir))
    hp = Hyper(epochs=args.epochs)
    x = windows_of(data)

    stats = "loss {task.fields[loss]:.4f}"
    with training_progress("{task.description:<7}", stats, console) as progress:
        model = fit(x.train, hp, args.seed, progress)
    train_seconds = time.perf_counter() - started
    taus = calibrate(model, x.val, hp)
    log.info("thresholds: %s", ", ".join(f"{k} {v:.4g}" for k, v in taus.items()))
    fitted = Fitted(model, hp, args.seed, taus, train_seconds)

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    export_fp32_int8(
        model,
        torch.from_numpy(x.train[:2]),
        out / FILES["fp32"],
        out / FILES["int8"],
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        doc=f"Roost {NAME} {VERSION}: raw {ANOMALY_V1.spec_id} window -> {list(OUTPUT_LABELS)}",
        quiet_quantizer=True,  # the quantizer's advice on pre-processing is noise here
    )
    checked = check_against_torch(model, out / FILES["fp32"], x.test)
    scored = score_variants(out, data, x.test)
    metrics = collect_metrics(out, data, x, fitted=fitted, checked=checked, scored=scored)
    manifest = build_manifest(out, scored.served, x.train, data, metrics)
    card = CardContext(
        data=data,
        hp=hp,
        served=scored.served,
        int8_speedup=INT8_SPEEDUP,
        int8_max_drop=INT8_MAX_DROP,
    )
    write_artifacts(out, manifest, model_card(manifest, card))
    if str(args.plot) not in ("", "."):
        title = f"Roost anomaly {VERSION} ({scored.served}) on injected faults, test period"
        plot_faults(scored.evals[scored.served], data, args.plot, title)
        log.info("figure: %s", args.plot)
    elapsed = time.perf_counter() - started

    console.print(fault_table(f"{NAME} {VERSION} -> {out} (served: {scored.served})", metrics))
    console.print(summary_table(metrics, scored, fitted, elapsed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
