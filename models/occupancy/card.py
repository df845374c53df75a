"""The occupancy model card (``MODEL_CARD.md``): its template and rendering.

:func:`model_card` renders the card of a trained artifact from its manifest and the
facts of the training run the manifest does not hold (:class:`CardContext`).
Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt

from models.datasets import OccupancyData
from models.export import OPSET
from models.manifest import Manifest
from models.occupancy.net import HIDDEN, LABELS


def _stamp(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M")


def _span(ts: npt.NDArray[np.float64]) -> str:
    return f"{_stamp(float(ts.min()))} to {_stamp(float(ts.max()))} (room local time)"


CITATION = (
    "Candanedo, L.M., Feldheim, V. (2016), *Accurate occupancy detection of an office "
    "room from light, temperature, humidity and CO2 measurements using statistical "
    "learning models*, Energy and Buildings 112, 28\u201339."
)


@dataclass(frozen=True)
class CardContext:
    """What the card states beyond the manifest: the data, the drift check of the
    training run and the recipe's int8 rule."""

    size_bytes: int
    train_data: OccupancyData
    test_data: OccupancyData
    holdout_start_ts: float
    holdout_false_occupied: int
    holdout_false_vacant: int
    int8_max_accuracy_loss: float


def model_card(manifest: Manifest, ctx: CardContext) -> str:
    """The MODEL_CARD.md text of a trained occupancy artifact."""
    m = manifest.metrics
    train_data, test_data = ctx.train_data, ctx.test_data
    feature_rows = "\n".join(
        f"| {i} | `{f.name}` | {f.unit or '—'} | {b:.4f} |"
        for i, (f, b) in enumerate(zip(manifest.input.features, manifest.baseline, strict=True))
    )
    n_train, n_test = len(train_data), len(test_data)
    n_in = manifest.input.shape[0]
    labels = ", ".join(f"`{label}`" for label in manifest.output_labels)
    arch = (
        f"clamp to training range → standardize (training mean/std) → Linear({n_in}, {HIDDEN})"
        f" → ReLU → Linear({HIDDEN}, {HIDDEN}) → ReLU → Linear({HIDDEN}, {len(LABELS)})"
        " → softmax; no BatchNorm"
    )
    n_hold = round(n_train * m["holdout_fraction"])
    return f"""# Model card: `{manifest.name}` {manifest.version}

Room occupancy classifier for the Roost hub: from the latest temperature, humidity,
illuminance and CO2 readings of one room plus the time of day, the probability that
the room is occupied.

| | |
|---|---|
| served file | `{manifest.file}` (ONNX opset {OPSET}, one self-contained file) |
| sha256 | `{manifest.sha256}` |
| parameters | {int(m["params"])} |
| architecture | {arch} |
| input | `{manifest.input.name}`: float32 `[batch, {n_in}]`, raw physical units |
| output | `{manifest.output_name}`: float32 `[batch, 2]`, rows sum to 1, labels {labels} |
| feature spec | `{manifest.feature_spec}` (`models.features.OCCUPANCY_V1`) |
| training | `python -m models.occupancy.train` (seed {int(m["seed"])}, {int(m["epochs"])} epochs) |

## Precision: fp32 and int8

Both ship. int8 (dynamic int8 weights, `onnxruntime.quantization`) is served when it
at least halves the file and loses at most {ctx.int8_max_accuracy_loss * 100:.1f} pp of
test accuracy; this model is so small that the graph, not the weights, dominates, so
fp32 is served. Latency: one row, `session.run`, one thread, measured while training
(noisy); `make bench` measures both side by side.

| variant | file | size (bytes) | test accuracy | latency p50 (µs) |
|---|---|---|---|---|
| fp32 | `{manifest.variants["fp32"].file}` | {ctx.size_bytes} | {m["test_accuracy"]:.4f} | {m["latency_p50_us_fp32"]:.1f} |
| int8 | `{manifest.variants["int8"].file}` | {int(m["size_bytes_int8"])} | {m["test_accuracy_int8"]:.4f} | {m["latency_p50_us_int8"]:.1f} |

## Intended use

Occupancy inference on the hub for comfort and energy automations (lighting,
heating, ventilation), and the base model for on-device personalization. The output
is a probability; the decision threshold is the caller's (metrics below use 0.5).
Not for security, safety or presence-critical decisions, and not for identifying or
counting people.

## Features

Built with `models.features.snapshot(OCCUPANCY_V1, latest, ts)`, the function the
hub's `FeatureWindow` uses at serving time. Sensors are matched by kind
(`temperature`, `humidity`, `illuminance`, `carbon_dioxide`); the time of day is the
room's local hour as `hour_sin`/`hour_cos`. The dataset's `HumidityRatio` column is
not used. Inputs outside the training range are clamped to it inside the graph.
Baseline (training-set mean, used for occlusion explanations):

| # | feature | unit | baseline |
|---|---|---|---|
{feature_rows}

## Data and attribution

UCI Occupancy Detection dataset, licensed **CC BY 4.0** (no changes to the data; the
model is derived from it). Citation: {CITATION}

One office room, one-minute readings, February 2015. Read from the shared data
directory (`../shared/data/occupancy`); the data is not part of this repository.

- Training: `datatraining.txt`, {n_train} rows, {_span(train_data.ts)},
  sha256 `{manifest.training_data_sha256}`. Class-weighted cross-entropy
  (inverse class frequency), Adam, weight decay {m["weight_decay"]:g}.
- Test: `datatest.txt`, {n_test} rows, {_span(test_data.ts)}, door closed,
  sha256 `{test_data.sha256}`. Not used for training.

## Metrics

On `datatest.txt`, computed with the exported ONNX file (fp32) in onnxruntime,
threshold 0.5 on P(occupied):

| metric | value |
|---|---|
| accuracy | {m["test_accuracy"]:.4f} |
| precision (occupied) | {m["test_precision"]:.4f} |
| recall (occupied) | {m["test_recall"]:.4f} |
| F1 (occupied) | {m["test_f1"]:.4f} |
| max abs diff, torch vs onnxruntime | {m["onnx_parity_max_abs_diff"]:.1e} |

The dataset paper reports 95-99 % accuracy on its test sets. For scale, the rule
"illuminance > {m["light_rule_threshold_lx"]:g} lx" (threshold fitted on the training
rows) scores {m["light_rule_test_accuracy"]:.4f} on this test set: the test set is easy,
and it does not show an advantage of this model over that rule.

Drift check: the same recipe trained on the first {n_train - n_hold} training rows
scores **{m["holdout_accuracy"]:.4f}** on the last {n_hold} (the later days, from
{_stamp(ctx.holdout_start_ts)}), with {ctx.holdout_false_occupied} false "occupied"
and {ctx.holdout_false_vacant} false "vacant" rows; an illuminance rule fitted on the
same first rows scores {m["light_rule_holdout_accuracy"]:.4f} there. For seed 0 almost all
of the model's errors fall on the Monday evening after people left and over the
lunch break, with CO2 or humidity above anything in those first training rows.
The shipped model is trained on all training rows, including those days.

## Limits

- One office room over about one week in February 2015 (winter). Other rooms,
  homes, seasons, sensor placements and sensor models shift every feature; expect
  lower accuracy until the model is personalized on local data.
- The test set was recorded with the door closed; the paper's second (door-open)
  test set was not evaluated.
- Illuminance dominates: daylight, lamps left on, or an occupied dark room
  (sleeping, watching TV) mislead it. CO2 lags occupancy, so readings right after
  a room is left can still look occupied (see the drift check).
- **Does not beat the light rule on unseen days.** On another week of the same
  office (not in `../shared/data`; measured for issue 18) it scores 97.3 % accuracy and F1 0.940, against 99.3 % and F1 0.984
  for the `light > 364 lx` rule, with 4.6x more false "occupied" rows. 108 of its
  255 false alarms fall in a dark room 3-15 h after people left, driven by CO2 at
  1,460-2,080 ppm: the snapshot has no history to tell "CO2 still high" from "someone is here".
- **Operating point not chosen on held-out data.** 0.5 on P(occupied) is the
  argmax default, not a threshold chosen on validation, and the probabilities are
  not calibrated. Class weighting (inverse class frequency) pushes them towards
  "occupied": recall is high and precision lower. A higher threshold helps on the
  week above (issue 18: 0.7 gives 99.2 %, chosen after the fact) but not on
  `datatest.txt`, whose false "occupied" rows are lit rooms people stepped out of.
- Trained on office-hour routines (weekdays plus one weekend), not household ones.
- Hour-of-day features assume timestamps in the room's local time.
- The weight decay and epoch count were settled while checking that
  `datatest.txt` clears the 97 % floor, so the test numbers are slightly
  optimistic as an estimate of unseen-data accuracy.
- One snapshot per prediction; no history of readings is used.
"""
