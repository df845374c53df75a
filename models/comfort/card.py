"""The comfort model card (``MODEL_CARD.md``): its template and rendering.

:func:`model_card` renders the card of a trained artifact from its manifest and the
facts of the training run the manifest does not hold (:class:`CardContext`).
Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.comfort.data import FEED_ORDER, AppliancesData, day, split_bounds
from models.comfort.evaluate import HORIZON_MINUTES
from models.comfort.net import HIDDEN, N_OUT, N_SENSORS
from models.comfort.spec import COMFORT_V1
from models.export import INT8_MAX_SIZE_RATIO, OPSET
from models.manifest import Manifest

CITATION = (
    "Candanedo, L.M., Feldheim, V., Deramaix, D. (2017), *Data driven prediction models "
    "of energy use of appliances in a low-energy house*, Energy and Buildings 140, 81\u201397."
)


@dataclass(frozen=True)
class CardContext:
    """What the card states beyond the manifest: the data, the run's per-room numbers
    and the recipe's int8 rule and latency procedure."""

    data: AppliancesData
    sizes: dict[str, int]
    split_rows: dict[str, int]
    served: str
    per_room: list[tuple[str, str, int, list[float]]]  # room, name, n, MAEs
    int8_max_mae_loss: float
    latency_rounds: int
    latency_calls: int
    large_change_c: float


def _pct(model: float, base: float) -> str:
    return f"{100.0 * (base - model) / base:.0f} %"


def model_card(manifest: Manifest, ctx: CardContext) -> str:
    """The MODEL_CARD.md text of a trained comfort artifact."""
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
        f"and its test MAE is within {ctx.int8_max_mae_loss} °C of fp32's at both horizons "
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
temperature actually changes by {ctx.large_change_c} °C or more within the hour, the +60 min
MAE is {m["large_change_mae_60_fp32"]:.3f} °C for the model and
{m["large_change_persistence_mae_60"]:.3f} °C for persistence.

## Precision: fp32 and int8

Both files ship; {why}. int8 is dynamic quantization of the weights
(`onnxruntime.quantization.quantize_dynamic`); activation scales are taken per
call, so a batched int8 forecast depends slightly on the other rows of its batch.
Latency: p50 of one-row `session.run` calls, one thread, on the training machine
(the best of {ctx.latency_rounds} interleaved rounds of {ctx.latency_calls} calls per variant);
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
