"""Train the indoor comfort forecaster and ship it as ONNX artifacts (fp32 and int8).

Run from the repository root::

    python -m models.comfort.train [--out models/artifacts/comfort] [--epochs N] [--seed 0]

One room-agnostic model for every room: each of the eight indoor rooms of UCI
Appliances Energy Prediction is its own stream of readings, fed in time order
through the hub's :class:`models.features.FeatureWindow` on ``COMFORT_V1`` (two
hours of 10-minute snapshots of the room's temperature and humidity, the outdoor
temperature and humidity, and the time of day). The model forecasts the room
temperature 30 and 60 minutes ahead: it predicts the change and adds the current
temperature in the graph, which takes raw physical units (all scaling is baked in).

Chronological split by calendar day: training days, then validation days (which
pick the epoch), then the test days on which every reported number is computed
with the exported ONNX files in onnxruntime. Deterministic: a rebuild with the same
seed writes byte-identical ONNX files (the manifest's and card's latencies vary).

This is the only module of ``models.comfort`` that imports torch.
"""

from __future__ import annotations

import argparse
import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from torch import nn

from models.comfort.data import (
    FEED_ORDER,
    ROOMS,
    AppliancesData,
    F32Array,
    Samples,
    build_samples,
    day,
    fit_linear,
    load_appliances,
    mae,
    persistence,
    predict_linear,
    split_bounds,
    split_masks,
)
from models.comfort.evaluate import DECIMALS, HORIZON_MINUTES, mae_metrics, variant_metrics
from models.comfort.spec import COMFORT_V1, OUTPUT_LABELS, TEMPERATURE
from models.datasets import DatasetMissing, appliances_path
from models.export import (
    INT8_MAX_SIZE_RATIO,
    OPSET,
    export_onnx,
    latency,
    quantize_int8,
    run,
    serve_int8,
)
from models.manifest import (
    InputSchema,
    Manifest,
    Variant,
    sha256_file,
    shipped_models_dir,
)
from models.reference import reference_histograms
from models.training import const, make_deterministic, param_count

log = logging.getLogger("models.comfort.train")

NAME = "comfort"
VERSION = "1.0.0"
ONNX_FILE = "comfort.onnx"
INT8_FILE = "comfort.int8.onnx"
INPUT_NAME = "features"
OUTPUT_NAME = "forecast"
HIDDEN = 64
# int8 is served only if its test MAE is within this of fp32's at both horizons (degC),
# and it passes the project's size rule (models.export.serve_int8). Timing is reported
# but does not choose: it is too noisy to decide a reproducible artifact by.
INT8_MAX_MAE_LOSS = 0.05
# Latency: interleaved rounds of single-row calls per variant; the best round's p50.
LATENCY_ROUNDS = 5
LATENCY_CALLS = 1000
# torch vs onnxruntime fp32, max abs difference of the forecasts (degC).
PARITY_TOLERANCE = 1e-4
# The model must cut the persistence MAE by at least this fraction at each horizon.
MIN_GAIN_OVER_PERSISTENCE = 0.10
# A "large change" (model card): the room temperature moves this much within the hour.
LARGE_CHANGE_C = 0.5
N_SENSORS = len(COMFORT_V1.sensors)
N_OUT = len(OUTPUT_LABELS)


# --- Model -----------------------------------------------------------------------------


class ComfortNet(nn.Module):
    """Raw window -> scaled features -> MLP -> temperature change -> + current temperature.

    Features (all constants are buffers, from the training windows): each sensor's
    latest value, standardized; each sensor's earlier values as differences from its
    latest value, divided by their RMS; the latest time of day. They are clamped to
    the training range. The MLP predicts the change of the room temperature in units
    of its training RMS at each horizon; the graph adds the current temperature back,
    so the output is in degC. No BatchNorm.
    """

    level_mean: torch.Tensor
    level_std: torch.Tensor
    diff_scale: torch.Tensor
    lower: torch.Tensor
    upper: torch.Tensor
    delta_scale: torch.Tensor

    def __init__(self, x: F32Array, y: F32Array, hidden: int = HIDDEN) -> None:
        super().__init__()
        sensors = x[:, :, :N_SENSORS].astype(np.float64)
        last = sensors[:, -1]
        diffs = sensors[:, :-1] - sensors[:, -1:]
        diff_rms = np.sqrt(np.mean(diffs**2, axis=(0, 1)))
        level_std = last.std(axis=0)
        self.register_buffer("level_mean", const(last.mean(axis=0)))
        self.register_buffer("level_std", const(np.where(level_std > 1e-6, level_std, 1.0)))
        self.register_buffer("diff_scale", const(np.where(diff_rms > 1e-6, diff_rms, 1.0)))
        scaled = self._scale(torch.from_numpy(x)).numpy()
        self.register_buffer("lower", const(scaled.min(axis=0)))
        self.register_buffer("upper", const(scaled.max(axis=0)))
        delta = y.astype(np.float64) - x[:, -1, TEMPERATURE : TEMPERATURE + 1]
        self.register_buffer("delta_scale", const(np.sqrt(np.mean(delta**2, axis=0))))
        n_in = scaled.shape[1]
        self.mlp = nn.Sequential(
            nn.Linear(n_in, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, N_OUT),
        )

    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        sensors = x[:, :, :N_SENSORS]
        last = sensors[:, -1, :]
        diffs = (sensors[:, :-1, :] - sensors[:, -1:, :]) / self.diff_scale
        levels = (last - self.level_mean) / self.level_std
        time_of_day = x[:, -1, N_SENSORS:]
        return torch.cat([levels, diffs.flatten(1), time_of_day], dim=1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.minimum(torch.maximum(self._scale(x), self.lower), self.upper)

    def scaled_delta(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.mlp(self.features(x))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        current = x[:, -1, TEMPERATURE : TEMPERATURE + 1]
        return current + self.scaled_delta(x) * self.delta_scale


# --- Training --------------------------------------------------------------------------


@dataclass(frozen=True)
class Hyper:
    epochs: int = 12
    batch_size: int = 256
    lr: float = 2e-3


@dataclass(frozen=True)
class TrainResult:
    model: ComfortNet
    best_epoch: int  # 1-based
    val_mae: tuple[float, ...]  # per horizon, at best_epoch


def _predict(model: ComfortNet, x: F32Array) -> F32Array:
    with torch.no_grad():
        out: F32Array = model(torch.from_numpy(x)).numpy()
    return out


def train(
    train_set: Samples,
    val_set: Samples,
    *,
    hp: Hyper,
    seed: int,
    on_epoch: Callable[[int, float, tuple[float, ...]], None],
) -> TrainResult:
    """Adam on the L1 loss (MAE), cosine-decayed learning rate; keep the epoch with the
    lowest mean validation MAE over both horizons."""
    torch.manual_seed(seed)
    model = ComfortNet(train_set.x, train_set.y)
    opt = torch.optim.Adam(model.parameters(), lr=hp.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=hp.epochs)
    gen = torch.Generator().manual_seed(seed)
    xt = torch.from_numpy(train_set.x)
    current = xt[:, -1, TEMPERATURE : TEMPERATURE + 1]
    target = (torch.from_numpy(train_set.y) - current) / model.delta_scale
    best: tuple[float, int, tuple[float, ...], dict[str, torch.Tensor]] | None = None
    for epoch in range(1, hp.epochs + 1):
        model.train()
        order = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for start in range(0, len(order), hp.batch_size):
            batch = order[start : start + hp.batch_size]
            opt.zero_grad()
            loss = (model.scaled_delta(xt[batch]) - target[batch]).abs().mean()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            total += float(loss.item()) * len(batch)
        sched.step()
        model.eval()
        val = tuple(float(v) for v in mae(_predict(model, val_set.x), val_set.y))
        on_epoch(epoch, total / len(xt), val)
        score = float(np.mean(val))
        if best is None or score < best[0]:
            best = (score, epoch, val, copy.deepcopy(model.state_dict()))
    assert best is not None
    model.load_state_dict(best[3])
    model.eval()
    return TrainResult(model=model, best_epoch=best[1], val_mae=best[2])


# --- Model card ------------------------------------------------------------------------

CITATION = (
    "Candanedo, L.M., Feldheim, V., Deramaix, D. (2017), *Data driven prediction models "
    "of energy use of appliances in a low-energy house*, Energy and Buildings 140, 81\u201397."
)


@dataclass(frozen=True)
class CardContext:
    data: AppliancesData
    sizes: dict[str, int]
    split_rows: dict[str, int]
    served: str
    per_room: list[tuple[str, str, int, list[float]]]  # room, name, n, MAEs


def _pct(model: float, base: float) -> str:
    return f"{100.0 * (base - model) / base:.0f} %"


def model_card(manifest: Manifest, ctx: CardContext) -> str:
    m = manifest.metrics
    bounds = split_bounds(ctx.data)
    shape = manifest.input.shape
    baseline = np.asarray(manifest.baseline).reshape(shape)
    feature_rows = "\n".join(
        f"| {i} | `{f.name}` | {f.unit or '—'} | {float(baseline[:, i].mean()):.3f} |"
        for i, f in enumerate(manifest.input.features)
    )
    room_rows = "\n".join(
        f"| `{room}` | {name} | {n} | " + " | ".join(f"{v:.3f}" for v in maes) + " |"
        for room, name, n, maes in ctx.per_room
    )
    n_in = N_SENSORS * COMFORT_V1.window + 2
    arch = (
        f"per sensor: latest value standardized + {COMFORT_V1.window - 1} earlier values as "
        f"differences from it (RMS-scaled), + latest `hour_sin`/`hour_cos` ({n_in} values, "
        f"clamped to the training range) → Linear({n_in}, {HIDDEN}) → ReLU → "
        f"Linear({HIDDEN}, {HIDDEN}) → ReLU → Linear({HIDDEN}, {N_OUT}) → times the training RMS "
        "of the change → + current temperature; no BatchNorm"
    )
    served_file = manifest.variants[ctx.served].file
    other = "int8" if ctx.served == "fp32" else "fp32"
    ratio = ctx.sizes["int8"] / ctx.sizes["fp32"]
    loss = max(m[f"test_mae_{h}_int8"] - m[f"test_mae_{h}_fp32"] for h in HORIZON_MINUTES)
    rule = (
        f"int8 is served when its file is at most {INT8_MAX_SIZE_RATIO:g} of the fp32 file "
        f"and its test MAE is within {INT8_MAX_MAE_LOSS} °C of fp32's at both horizons "
        "(`models.export.serve_int8`; latency is measured and reported but does not "
        "choose, as it is too noisy on a shared machine to decide a reproducible artifact)"
    )
    why = (
        f"{rule}. Here the int8 file is {ratio:.3f} of the fp32 file and its MAE is at worst "
        f"{loss:+.4f} °C from fp32's, so **{ctx.served}** is served"
    )
    rows = ctx.split_rows
    worst = max(ctx.per_room, key=lambda r: r[3][1])
    behind = [
        f"{name} (`{room}`)"
        for room, name, _, maes in ctx.per_room
        if maes[0] >= maes[2] or maes[1] >= maes[3]
    ]
    room_note = f"The largest errors are in the {worst[1]} (`{worst[0]}`). " + (
        f"In the {' and the '.join(behind)} the model does not beat persistence at every "
        "horizon: one room-agnostic model fits those rooms worse than the others."
        if behind
        else "The model beats persistence in every room at both horizons."
    )
    return f"""# Model card: `{manifest.name}` {manifest.version}

Indoor comfort forecaster for the Roost hub: from the last two hours of one room's
temperature and humidity, the outdoor temperature and humidity and the time of day,
the room temperature **30 and 60 minutes ahead** (°C). One model for every room.

| | |
|---|---|
| served file | `{manifest.file}` ({ctx.served}; ONNX opset {OPSET}, one self-contained file) |
| sha256 | `{manifest.sha256}` |
| parameters | {int(m["params"])} |
| architecture | {arch} |
| input | `{manifest.input.name}`: float32 `[batch, {shape[0]}, {shape[1]}]`, raw physical units, oldest snapshot first |
| output | `{manifest.output_name}`: float32 `[batch, {N_OUT}]`, °C: {", ".join(f"`{s}`" for s in manifest.output_labels)} |
| feature spec | `{manifest.feature_spec}` (`models.comfort.spec.COMFORT_V1`) |
| training | `python -m models.comfort.train` (seed {int(m["seed"])}, {int(m["epochs"])} epochs, best validation epoch {int(m["best_epoch"])}; about half a minute on one CPU thread) |

## Intended use

Short-term room temperature forecasts on the hub for comfort automations: pre-heating
or ventilating before a room drifts out of its comfort band, flagging a room that is
cooling fast (a window left open), and as a base model for on-device personalization.
The forecast is advisory input to automations; not for safety decisions (frost
protection, health-critical temperature control) and not a substitute for a
thermostat's own control loop.

## Features

`COMFORT_V1`: {COMFORT_V1.window} snapshots, one every {COMFORT_V1.step_seconds:.0f} s of
reading time (two hours), of the sensor kinds `temperature`, `humidity` (the room),
`outdoor_temperature`, `outdoor_humidity` (the weather), plus `hour_sin`/`hour_cos` of
the local time. Training windows are what the hub's own `FeatureWindow` returns when
each room's readings are fed to it in time order, one 10-minute row at a time, in
the order {", ".join(f"`{k}`" for k in FEED_ORDER)}: the window takes a snapshot at
the first reading of each new step, so each snapshot has the room temperature of its
own row and the other readings of the previous row (10 minutes older). A window is
ready once it holds {COMFORT_V1.window} snapshots and no sensor is older than
{COMFORT_V1.max_staleness_seconds:.0f} s. Column means of the training windows (the
occlusion baseline, stored per snapshot in the manifest):

| # | feature | unit | training mean |
|---|---|---|---|
{feature_rows}

## Data and attribution

UCI Appliances Energy Prediction dataset, licensed **CC BY 4.0** (no changes to the
data; the model is derived from it). Citation: {CITATION}

One low-energy house in Belgium, a row every 10 minutes, {day(float(ctx.data.ts[0]))} to
{day(float(ctx.data.ts[-1]))} ({len(ctx.data)} rows, zip sha256 `{ctx.data.sha256}`),
read from the shared data directory (`../shared/data/appliances`), never part of this
repository. Rooms used (one sample stream each): `T1`/`RH_1` kitchen, `T2`/`RH_2`
living room, `T3`/`RH_3` laundry, `T4`/`RH_4` office, `T5`/`RH_5` bathroom,
`T7`/`RH_7` ironing room, `T8`/`RH_8` teenager room, `T9`/`RH_9` parents' room.
`T6`/`RH_6` (outside the building) is not used; the outdoor features are the weather
station's `T_out`/`RH_out`. Timestamps are read as the house's wall time.

Chronological split by calendar day (a sample belongs to a split when its forecast
origin and its +60 min target both do):

| split | days | samples (8 rooms) |
|---|---|---|
| train | {day(bounds["train"][0])} to {day(bounds["val"][0] - 1)} | {rows["train"]} |
| validation (picks the epoch) | {day(bounds["val"][0])} to {day(bounds["test"][0] - 1)} | {rows["val"]} |
| test | {day(bounds["test"][0])} to {day(bounds["test"][1])} | {rows["test"]} |

## Metrics

Test days, mean absolute error in °C, all rooms pooled, computed from the exported
ONNX files in onnxruntime (int8 one row per `session.run`, as `Predict` serves it;
fp32 in one batch, which gives the same forecasts up to float rounding);
`python -m models.comfort.evaluate` recomputes them.

| forecaster | +30 min | +60 min |
|---|---|---|
| **model, fp32** | **{m["test_mae_30_fp32"]:.4f}** | **{m["test_mae_60_fp32"]:.4f}** |
| model, int8 | {m["test_mae_30_int8"]:.4f} | {m["test_mae_60_int8"]:.4f} |
| persistence (temperature stays as it is) | {m["persistence_mae_30"]:.4f} | {m["persistence_mae_60"]:.4f} |
| linear (least squares on the same {shape[0] * shape[1]} raw inputs) | {m["linear_mae_30"]:.4f} | {m["linear_mae_60"]:.4f} |
| model fp32 vs persistence | {_pct(m["test_mae_30_fp32"], m["persistence_mae_30"])} lower | {_pct(m["test_mae_60_fp32"], m["persistence_mae_60"])} lower |
| model fp32 vs linear | {_pct(m["test_mae_30_fp32"], m["linear_mae_30"])} lower | {_pct(m["test_mae_60_fp32"], m["linear_mae_60"])} lower |

Validation days (model in torch, best epoch): {m["val_mae_30"]:.4f} / {m["val_mae_60"]:.4f}.
Largest torch-vs-onnxruntime difference on the test inputs: {m["onnx_parity_max_abs_diff"]:.1e} °C.

Per room, test days, MAE in °C (model fp32 / persistence / linear):

| room | | samples | model +30 | model +60 | persistence +30 | persistence +60 | linear +30 | linear +60 |
|---|---|---|---|---|---|---|---|---|
{room_rows}

{room_note}

Large changes: on the {100 * m["large_change_fraction_60"]:.1f} % of test samples whose
temperature actually changes by {LARGE_CHANGE_C} °C or more within the hour, the +60 min
MAE is {m["large_change_mae_60_fp32"]:.3f} °C for the model and
{m["large_change_persistence_mae_60"]:.3f} °C for persistence.

## Precision: fp32 and int8

Both files ship; {why}. int8 is dynamic quantization of the weights
(`onnxruntime.quantization.quantize_dynamic`); activation scales are taken per
call, so a batched int8 forecast depends slightly on the other rows of its batch.
Latency: p50 of one-row `session.run` calls, one thread, on the training machine
(the best of {LATENCY_ROUNDS} interleaved rounds of {LATENCY_CALLS} calls per variant);
it varies from run to run with the machine's load (`make bench` measures it again).

| variant | file | size (bytes) | test MAE +30 | test MAE +60 | latency p50 (µs) |
|---|---|---|---|---|---|
| fp32 | `{manifest.variants["fp32"].file}` | {ctx.sizes["fp32"]} | {m["test_mae_30_fp32"]:.4f} | {m["test_mae_60_fp32"]:.4f} | {m["latency_p50_us_fp32"]:.1f} |
| int8 | `{manifest.variants["int8"].file}` | {ctx.sizes["int8"]} | {m["test_mae_30_int8"]:.4f} | {m["test_mae_60_int8"]:.4f} | {m["latency_p50_us_int8"]:.1f} |

Served: `{served_file}`; `{manifest.variants[other].file}` ships alongside.

## Limits

- One house: a low-energy house in Belgium, January to May 2016, mostly heating
  season. Other buildings (thermal mass, insulation, heating
  systems, sensor placement), climates and the summer/cooling season are not
  represented; expect larger errors until the model is personalized on local data.
- The test days (May) are warmer than the training days (January to mid-April);
  inputs beyond the training range are clamped inside the graph.
- 10-minute readings (the dataset's cadence). The window needs a reading of every sensor kind at least every
  {COMFORT_V1.max_staleness_seconds:.0f} s; sensors that report only on change may
  leave it not ready, and after a gap the hub's window still holds snapshots from
  before the gap.
- Snapshots are taken at the first reading of each 10-minute step; the model was
  trained with the room temperature arriving first in each step. If other sensors
  report first, the snapshot's room temperature is up to one step old.
- Room-agnostic: the model does not know which room it is in (see the per-room
  table); occupancy, heating set-points, open windows and appliance use are not
  inputs, so changes they cause are forecast only once they show in the readings.
- Temperature changes over an hour are small here (persistence is already within
  {m["persistence_mae_60"]:.2f} °C on average at +60 min); the model's gain is
  {m["persistence_mae_60"] - m["test_mae_60_fp32"]:.2f} °C on average at +60 min and
  {m["large_change_persistence_mae_60"] - m["large_change_mae_60_fp32"]:.2f} °C on the large changes.
- Hour-of-day features assume timestamps in local time. The dataset's clock does
  not skip an hour at the 2016-03-27 daylight-saving change, so from then on its
  hours may be one hour behind Belgian summer time. Weekdays and holidays
  are not features.
"""


# --- Main ------------------------------------------------------------------------------


def _per_room(test: Samples, preds: list[F32Array]) -> list[tuple[str, str, int, list[float]]]:
    rows = []
    for r, (room, (_, _, name)) in enumerate(ROOMS.items()):
        mask = test.room == r
        maes: list[float] = []
        for pred in preds:
            maes.extend(float(v) for v in mae(pred[mask], test.y[mask]))
        rows.append((room, name, int(mask.sum()), maes))
    return rows


def _latencies(model_dir: Path, files: dict[str, str], row: F32Array) -> dict[str, float]:
    """p50 of one-row session.run per variant (µs): the lowest of interleaved rounds, so a
    busy moment on the machine slows one round rather than one variant."""
    rounds: dict[str, list[float]] = {v: [] for v in files}
    for _ in range(LATENCY_ROUNDS):
        for v, f in files.items():
            rounds[v].append(latency(model_dir / f, row, INPUT_NAME, calls=LATENCY_CALLS).p50_us)
    return {v: min(ps) for v, ps in rounds.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=shipped_models_dir() / NAME)
    parser.add_argument("--epochs", type=int, default=Hyper.epochs)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error("--epochs must be at least 1")
    logging.basicConfig(
        level=logging.INFO, format="%(message)s", handlers=[RichHandler(show_path=False)]
    )
    started = time.perf_counter()
    make_deterministic()
    np.random.seed(args.seed)  # numpy is not sampled from; seeded for good measure

    try:
        data = load_appliances()
    except DatasetMissing as e:
        Console(stderr=True).print(f"[red]cannot train {NAME}:[/] {e}")
        return 2
    log.info("%d rows from %s", len(data), appliances_path())
    samples = build_samples(data)
    masks = split_masks(samples, data)
    train_set, val_set, test_set = (samples.take(masks[s]) for s in ("train", "val", "test"))
    split_rows = {"train": len(train_set), "val": len(val_set), "test": len(test_set)}
    log.info("samples (8 rooms): %s", split_rows)

    hp = Hyper(epochs=args.epochs)
    columns = (
        TextColumn("[bold]train[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  val MAE {task.fields[val]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns) as progress:
        task = progress.add_task("train", total=hp.epochs, loss=float("nan"), val="—")

        def on_epoch(epoch: int, loss: float, val: tuple[float, ...]) -> None:
            shown = " / ".join(f"{v:.4f}" for v in val)
            progress.update(task, advance=1, loss=loss, val=shown)

        result = train(train_set, val_set, hp=hp, seed=args.seed, on_epoch=on_epoch)
    model = result.model
    n_params = param_count(model)
    log.info("best validation epoch %d: MAE %s", result.best_epoch, result.val_mae)

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    fp32_path, int8_path = out / ONNX_FILE, out / INT8_FILE
    export_onnx(
        model,
        torch.zeros(2, *COMFORT_V1.input_shape, dtype=torch.float32),
        fp32_path,
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        doc=(
            f"Roost {NAME} {VERSION}: raw {COMFORT_V1.spec_id} window -> room temperature "
            "(degC) at +30 and +60 min"
        ),
    )
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # onnxruntime.quantization logs every tensor at INFO
    try:
        quantize_int8(fp32_path, int8_path)
    finally:
        root.setLevel(level)

    parity = float(
        np.max(
            np.abs(
                run(fp32_path, test_set.x, INPUT_NAME, OUTPUT_NAME) - _predict(model, test_set.x)
            )
        )
    )
    if parity >= PARITY_TOLERANCE:
        raise RuntimeError(f"torch vs onnxruntime max abs diff {parity:.2e} >= {PARITY_TOLERANCE}")

    files = {"fp32": ONNX_FILE, "int8": INT8_FILE}
    metrics, preds = variant_metrics(out, files, test_set, INPUT_NAME, OUTPUT_NAME)
    persist = persistence(test_set)
    metrics |= mae_metrics("persistence", "", persist, test_set.y)
    linear = predict_linear(fit_linear(train_set), test_set)
    metrics |= mae_metrics("linear", "", linear, test_set.y)

    swing = np.abs(test_set.y[:, -1] - test_set.current_temperature) >= LARGE_CHANGE_C
    metrics |= {
        "large_change_fraction_60": round(float(swing.mean()), DECIMALS),
        "large_change_mae_60_fp32": round(
            float(mae(preds["fp32"][swing], test_set.y[swing])[-1]), DECIMALS
        ),
        "large_change_persistence_mae_60": round(
            float(mae(persist[swing], test_set.y[swing])[-1]), DECIMALS
        ),
    }
    lat = _latencies(out, files, test_set.x[0])
    int8_loss = max(
        metrics[f"test_mae_{h}_int8"] - metrics[f"test_mae_{h}_fp32"] for h in HORIZON_MINUTES
    )
    sizes = {v: (out / f).stat().st_size for v, f in files.items()}
    served = (
        "int8" if serve_int8(sizes["fp32"], sizes["int8"], int8_loss, INT8_MAX_MAE_LOSS) else "fp32"
    )
    metrics |= {
        f"val_mae_{h}": round(v, DECIMALS)
        for h, v in zip(HORIZON_MINUTES, result.val_mae, strict=True)
    }
    metrics |= {
        "test_samples": float(len(test_set)),
        "train_samples": float(len(train_set)),
        "val_samples": float(len(val_set)),
        "params": float(n_params),
        "size_bytes_fp32": float(sizes["fp32"]),
        "size_bytes_int8": float(sizes["int8"]),
        "latency_p50_us_fp32": round(lat["fp32"], 1),
        "latency_p50_us_int8": round(lat["int8"], 1),
        "onnx_parity_max_abs_diff": float(f"{parity:.3e}"),
        "epochs": float(hp.epochs),
        "best_epoch": float(result.best_epoch),
        "seed": float(args.seed),
    }
    manifest = Manifest(
        name=NAME,
        version=VERSION,
        task_kind="regression",
        file=files[served],
        sha256=sha256_file(out / files[served]),
        input=InputSchema.float32(
            INPUT_NAME, COMFORT_V1.input_shape, COMFORT_V1.feature_names, COMFORT_V1.units
        ),
        output_name=OUTPUT_NAME,
        output_labels=OUTPUT_LABELS,
        feature_spec=COMFORT_V1.spec_id,
        baseline=tuple(
            round(float(v), DECIMALS) for v in train_set.x.mean(axis=0, dtype=np.float64).ravel()
        ),
        training_data_sha256=data.sha256,
        reference=reference_histograms(train_set.x, COMFORT_V1.feature_names),
        metrics=dict(sorted(metrics.items())),
        description=(
            "Room temperature (degC) 30 and 60 minutes ahead from two hours of the room's "
            "temperature and humidity, the outdoor temperature and humidity and the time of "
            "day; trained on UCI Appliances Energy Prediction (CC BY 4.0)."
        ),
        variants={
            v: Variant(file=f, sha256=sha256_file(out / f), size_bytes=sizes[v])
            for v, f in files.items()
        },
    )
    (out / "manifest.json").write_text(manifest.to_json())
    elapsed = time.perf_counter() - started
    ctx = CardContext(
        data=data,
        sizes=sizes,
        split_rows=split_rows,
        served=served,
        per_room=_per_room(test_set, [preds["fp32"], persist, linear]),
    )
    (out / "MODEL_CARD.md").write_text(model_card(manifest, ctx))

    gains = [
        1.0 - metrics[f"test_mae_{h}_fp32"] / metrics[f"persistence_mae_{h}"]
        for h in HORIZON_MINUTES
    ]
    table = Table(title=f"{NAME} {VERSION} -> {out}  (test days, MAE degC)")
    table.add_column("forecaster")
    for h in HORIZON_MINUTES:
        table.add_column(f"+{h} min", justify="right")
    for label, key in (
        ("model fp32", "test_mae_{h}_fp32"),
        ("model int8", "test_mae_{h}_int8"),
        ("persistence", "persistence_mae_{h}"),
        ("linear", "linear_mae_{h}"),
    ):
        table.add_row(label, *(f"{metrics[key.format(h=h)]:.4f}" for h in HORIZON_MINUTES))
    table.add_row("gain vs persistence", *(f"{100 * g:.1f} %" for g in gains))
    console = Console()
    console.print(table)
    console.print(
        f"params {n_params}; fp32 {sizes['fp32']} B, p50 {lat['fp32']:.1f} µs; "
        f"int8 {sizes['int8']} B, p50 {lat['int8']:.1f} µs; serving {served}; "
        f"parity {parity:.1e}; wall time {elapsed:.1f} s"
    )
    if min(gains) < MIN_GAIN_OVER_PERSISTENCE:
        log.error(
            "the model cuts the persistence MAE by %.1f %% at worst, below the %.0f %% floor; "
            "artifacts written to %s anyway",
            100 * min(gains),
            100 * MIN_GAIN_OVER_PERSISTENCE,
            out,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
