"""The routine model card (``MODEL_CARD.md``): its template and rendering.

:func:`model_card` renders the card of a trained artifact from its manifest and the
facts of the training run the manifest does not hold (:class:`CardContext`).
Torch-free apart from the recipe's :class:`models.routine.net.Hyper` it describes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from models.manifest import Manifest
from models.routine.data import (
    CLASSES,
    OTHER_HOME_DROPPED,
    OTHER_HOME_MERGED,
    Dataset,
    KasterenData,
    class_counts,
)
from models.routine.net import Hyper
from models.routine.spec import (
    AREAS,
    COUNT_WINDOWS_MIN,
    INPUT_SHAPE,
    KASTEREN_MAPPING,
    KINDS,
    SPEC_ID,
)

CITATION = (
    "van Kasteren, T., Noulas, A., Englebienne, G., Kröse, B. (2008), *Accurate activity "
    "recognition in a home setting*, Proceedings of the 10th International Conference on "
    "Ubiquitous Computing (UbiComp '08), 1-9."
)


# The cross-home evaluation (``python -m models.routine.cross_home``, default and
# --seeds 3,4,5); the card quotes it verbatim (tests check the shipped card does).
CROSS_HOME_SECTION = """\
## Across real homes (issue 18): leave-one-home-out

The "other home" above is this same apartment with perturbed sensors. On real
homes the picture is different. `python -m models.routine.cross_home` trains a
cross-home candidate (vocabulary `routine/x2`: every installer area and kind incl.
bed/seat pressure mats, PIR motion, faucets, drawers, stove and small appliances,
pooled per area, per kind and per washroom = bathroom + toilet, and what the home
did since its entrance last opened: activations and distinct sensors since, and in
the first 30 minutes after, minutes since; each home's features standardized over
its own minutes without labels; MLP 64-64, 8 epochs, class weight power 0.5, mean of
seeds 0/1/2; every training row also seen once with whole tracks blanked at
probability 0.2, "track dropout") on two of van Kasteren's homes A-C at once and
scores the third, over the classes it has (all 8); then D and E (MIT, object
sensors) with models trained on all of A-C. It abstains ("unsure") on a toilet,
shower or drink below a probability threshold chosen by leave-one-home-out on the
training homes only. Baselines are fitted on the same training homes.

| held-out home | macro-F1 (seeds 0-2) | seeds 3-5 | routine/x1 before, seeds 0-2 / 3-5 | time-of-day | majority | away | asleep | toilet | shower | breakfast | dinner | drink | idle | unsure |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|
| houseA | **0.583** | 0.578 | 0.580 / 0.523 | 0.204 | 0.087 | 0.98 | 0.98 | 0.58 | 0.28 | 0.36 | 0.51 | 0.21 | 0.76 | 1.1 % |
| houseB | **0.549** | 0.545 | 0.446 / 0.471 | 0.190 | 0.093 | 0.80 | 0.93 | 0.49 | 0.77 | 0.25 | 0.52 | 0.26 | 0.38 | 0.4 % |
| houseC | **0.524** | 0.517 | 0.489 / 0.501 | 0.198 | 0.078 | 0.92 | 0.97 | 0.34 | 0.39 | 0.22 | 0.55 | 0.04 | 0.76 | 0.5 % |
| houseD | **0.176** | 0.198 | 0.176 / 0.144 | 0.011 | 0.013 | 0.21 | — | 0.10 | 0.04 | 0.21 | 0.47 | 0.02 | — | 5.2 % |
| houseE | **0.127** | 0.153 | 0.146 / 0.118 | 0.004 | 0.007 | 0.09 | — | 0.15 | 0.10 | 0.25 | 0.17 | 0.00 | — | 4.9 % |

Per-class columns are F1 of the seeds 0-2 run. **The issue's target (macro-F1 >= 0.60 on
each of A-C, shower and toilet F1 >= 0.5) is not met.** Presence transfers (away
0.80-0.98, asleep 0.93-0.98); short activities do not reliably: toilet 0.34-0.58,
shower 0.28-0.77, drink 0.04-0.26, breakfast 0.22-0.36. Where the gain over
`routine/x1` (mean over A-C and both seed sets 0.502 -> 0.549) comes from, without
abstention, seeds 0-2 / 3-5:

| A/B/C macro-F1, no abstention | seeds 0-2 | seeds 3-5 |
|---|---|---|
| x1 (before) | 0.560/0.460/0.492 | — |
| x2: + the entrance inputs | 0.567/0.511/0.521 | 0.572/0.507/0.517 |
| x2 + track dropout 0.2 | 0.589/0.522/0.543 | 0.586/0.533/0.530 |
| ... + abstention (the table above) | 0.583/0.549/0.524 | 0.578/0.545/0.517 |

The entrance inputs: house B's PIRs and a drawer fire while nobody is in (582
kitchen-PIR firings in its 200 hours away), so x1 called 5,584 of B's away minutes
idle (seed 0); one or two sensors firing since the door closed now read as away
(B's away F1 0.65 -> 0.80-0.83). Track dropout makes the model use more than one
sensor kind or area for a class (p = 0.2 and 0.35 gave 0.545 and 0.547 mean over A-C,
0.5 gave 0.526, seeds 0-2; the same data twice without blanking 0.535: the gain is
the blanking, not the extra steps); it also brings D and E back to x1's level. The
abstention moves single homes by +-0.03 and the mean by nothing (it costs A's shower:
0.41 -> 0.28). The D/E figures (object sensors on cupboards and appliances, no sleep
annotations) show that the candidate does not carry to a differently instrumented
home at all. The figures move by several points with the seeds (see the two
columns); the recipe, the features and the dropout rate were chosen looking at A-C's
leave-one-home-out, so these A-C figures are optimistic; D and E were used for no
choice. The baselines score near 0 on D/E because the training
homes' frequent classes (away, asleep, idle) are not annotated there. This candidate is **not** the served model: the
served `routine/v1` model above is unchanged.

Two data faults were found and fixed on the way (`models/routine/home_data.py`,
`homes/houseA.toml`, with tests on the data): house B's sensors run 3 days before and
10 days after its annotations, and those 13 days had been scored as `idle`; and house
A's release names its two hall doors the wrong way round (all 23 showers fire
"Hall-Toilet door", 99 of 114 toilet visits "Hall-Bathroom door" with the flush), so
the homes' mappings now follow what each door does. With both fixes the served model
(trained on A with the names as released) scores macro-F1 0.286 on B and 0.150 on C
(shower 0 on both).

Tried and not kept (exploratory A/B/C macro-F1 with x1; seed 0 for the first two,
seeds 0-2 for the others): the per-(area, kind)
groups without per-home standardization 0.47/0.36/0.22; D and E as extra training
homes 0.44/0.30/0.32 (their minutes are all activities); a causal HMM filter at full
strength over the model's probabilities 0.48/0.40/0.50; snapshots 5 and 15 min back as
extra inputs 0.58/0.46/0.50. With x2 (seeds 0-2, no track dropout, unless said): a
tempered causal filter
(the training homes' minute-to-minute class transitions to the power 0.1-0.5, the power
chosen with the abstention threshold on the training homes) 0.586/0.533/0.524 and
0.600/0.553/0.510 (seeds 3-5) with track dropout, against 0.583/0.549/0.524 and
0.578/0.545/0.517 without: no gain, so no filter; per-area "burst" inputs (the
current run of an area's activations: its length, activations, distinct sensors, a
flush in it) for kitchen, washroom, bedroom and living areas 0.56/0.50/0.50, kitchen
only 0.59/0.55/0.52 but 0.58/0.50/0.53 with seeds 3-5 (against 0.57/0.51/0.52):
noise; self-training on the held-out home's own unlabelled minutes (pseudo-labels at
probability >= 0.9, 60-85 % of its minutes) 0.55/0.52/0.51, drink collapsing to
0-0.14; re-estimating the held-out home's class priors by EM on its unlabelled
minutes (Saerens et al. 2002) 0.43/0.33/0.43, half-way 0.54/0.49/0.49; six seeds in
the ensemble instead of three 0.57/0.51/0.52. Class weight power (no abstention,
with track dropout): 0.25 gave 0.611/0.551/0.523 and 0.596/0.579/0.511 (seeds 3-5),
+0.01 on the mean in both seed sets against 0.5; 0.75 0.567/0.484/0.534; 0 (seeds
3-5) 0.569/0.552/0.486. Not adopted: picked on the held-out homes it would be one more
look at them; adopting it needs the power chosen by inner leave-one-home-out, like
the threshold. Per-home standardization (C: 0.24 to
0.46, seed 0), the entrance inputs (B: 0.46 to 0.51) and track dropout (mean +0.02)
were the gains.
"""


def _day(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M")


@dataclass(frozen=True)
class CardContext:
    """What the card states beyond the manifest: the data, the recipe's settings, the
    cross-validation reports, the served variant and the recipe's int8 rule."""

    data: KasterenData
    home: Dataset
    hp: Hyper
    cv: dict[str, float]
    other_cv: dict[str, float]
    baseline_tod: dict[str, float]
    served: str
    served_reason: str
    int8_max_f1_loss: float


def model_card(manifest: Manifest, ctx: CardContext) -> str:
    """The MODEL_CARD.md text of a trained routine artifact."""
    m = manifest.metrics
    data, home, hp = ctx.data, ctx.home, ctx.hp
    cv, other_cv, baseline_tod = ctx.cv, ctx.other_cv, ctx.baseline_tod
    served, served_reason = ctx.served, ctx.served_reason
    counts = class_counts(home.y)
    mapping_rows = "\n".join(
        f"| {name} | `{ref.area}` | `{ref.kind}` |"
        + (" dropped |" if name in OTHER_HOME_DROPPED else "")
        + (" merged into one cupboard |" if name in OTHER_HOME_MERGED else "")
        + ("" if name in OTHER_HOME_DROPPED or name in OTHER_HOME_MERGED else " kept, new id |")
        for name, ref in sorted(KASTEREN_MAPPING.items(), key=lambda kv: (kv[1], kv[0]))
    )
    class_rows = "\n".join(
        f"| `{c}` | {counts[c]} | {cv[f'precision_{c}']:.3f} | {cv[f'recall_{c}']:.3f} "
        f"| **{cv[f'f1_{c}']:.3f}** | {baseline_tod[f'f1_{c}']:.3f} | {other_cv[f'f1_{c}']:.3f} |"
        for c in CLASSES
    )
    variants = "\n".join(
        f"| {k} | `{v.file}` | {v.size_bytes} | {m[f'cv_macro_f1_{k}']:.4f} "
        f"| {m[f'cv_accuracy_{k}']:.4f} | {m[f'alldays_macro_f1_{k}']:.4f} "
        f"| {m[f'latency_p50_us_{k}']:.0f} / {m[f'latency_p99_us_{k}']:.0f} |"
        for k, v in sorted(manifest.variants.items())
    )
    windows = "/".join(str(w) for w in COUNT_WINDOWS_MIN)
    n_in = INPUT_SHAPE[0]
    arch = (
        f"standardize (training mean/std) → Linear({n_in}, {hp.hidden}) → ReLU → Dropout"
        f"({hp.dropout}) → Linear({hp.hidden}, {hp.hidden}) → ReLU → Dropout → "
        f"Linear({hp.hidden}, {len(CLASSES)}) → softmax; no BatchNorm"
    )
    return f"""# Model card: `{manifest.name}` {manifest.version}

Routine and presence classifier for the Roost hub: from the recent firing of a
home's binary sensors (doors, cupboards, appliances, toilet flush), the probability
of each current activity: {", ".join(f"`{c}`" for c in CLASSES)}.

| | |
|---|---|
| served file | `{manifest.file}` ({served}; ONNX opset 17, one self-contained file) |
| sha256 | `{manifest.sha256}` |
| parameters | {int(m["params"])} |
| architecture | {arch} |
| input | `{manifest.input.name}`: float32 `[batch, {n_in}]`, feature spec `{manifest.feature_spec}` |
| output | `{manifest.output_name}`: float32 `[batch, {len(CLASSES)}]` softmax, labels in the order above |
| training | `python -m models.routine.train --seed {int(m["seed"])} --epochs {int(m["epochs"])}` |
| re-scoring | `python -m models.routine.evaluate` (onnxruntime, torch-free) |

## Intended use

Presence (`away`, `asleep`) and daily-routine context for the hub's automations
(heating set-backs while away or asleep, "has breakfast happened" style reminders),
and the **home-agnostic base model** that on-device personalization adapts to a
household. Predictions are per minute and noisy; automations should smooth them over
several minutes. Not for safety- or care-critical decisions (e.g. fall or
inactivity alarms for a person living alone), not for identifying people, and
not for homes with several occupants.

## Home-agnostic features (`{SPEC_ID}`)

A home's sensors are described by a `SensorRef(area, kind)` (Home Assistant area and
`device_class` style) and features are computed per (area, kind) group, per area
(any sensor in it) and for the whole home, **never per sensor id**. The vector has a
slot for every group of the fixed vocabulary — areas {", ".join(f"`{a}`" for a in AREAS)};
kinds {", ".join(f"`{k}`" for k in KINDS)} — so any home maps into the same {n_in}
inputs and groups it lacks stay zero. Built by `models.routine.spec.RoutineWindow`,
the class the hub serves with; training replays the recorded events through it and
takes a snapshot at the end of every 60 s slice.

Per group, per area and for the home (5 each):

| feature | unit | meaning |
|---|---|---|
| `active` | bool | some sensor of the group is on / open now |
| `fired_{{{windows}}}m` | log1p(count) | activations (off→on) in the last 1, 10, 60 min (count capped at 100) |
| `recency` | 1 - log1p(min)/log1p(1440) | 1 = state changed just now, 0 = not within 24 h (or never) |

Per area also `last` (bool: the area of the home's most recent state change), plus
`hour_sin`/`hour_cos` of the local time of day. The window is ready 60 min after it
started observing. First-layer weights of inputs that are constant in the training
data (groups this apartment lacks) are zero and stay zero, so such groups cannot
perturb the base model in another home.

Mapping of this apartment's sensors (sensor names from the data header; the ids in
the data file are resolved to names by the loader and never reach the features),
and what the "other home" check does with each:

| sensor | area | kind | other home |
|---|---|---|---|
{mapping_rows}

The washing machine's room is not documented in the data set; a bathroom is assumed.

## Data and attribution

van Kasteren 2008: one single-person apartment (Amsterdam), 14 binary sensors,
{len(data.sensors)} firing intervals and {len(data.activities)} annotated activities,
{_day(data.start)} to {_day(data.end)} (local time). Research data; read from the shared
data directory (`../shared/data/kasteren`), not part of this repository.
Citation: {CITATION}

sha256 of `kasterenSenseData.txt` followed by `kasterenActData.txt`:
`{manifest.training_data_sha256}`.

**Labels.** 60 s slices `[t, t + 60)`, features at the slice end. A slice takes the
class of the annotation overlapping it (leave house → `away`, go to bed → `asleep`,
use toilet → `toilet`, take shower → `shower`, prepare breakfast → `breakfast`,
prepare dinner → `dinner`, get drink → `drink`), `idle` when none does. When several
overlap (always a short activity nested in a long one here, e.g. a toilet visit at
night), **the shortest annotation wins**; ties go to the earlier start, then the
lower class index. The first hour (window warm-up) is dropped: {len(home)} slices.

**Training.** Class-weighted cross-entropy (weight = inverse class frequency to the
power {hp.class_weight_power:g}), Adam (lr {hp.lr:g}, weight decay {hp.weight_decay:g}),
batch {hp.batch_size}, {int(m["epochs"])} epochs, seed {int(m["seed"])}; single-threaded
and deterministic: a rebuild produces byte-identical ONNX files. The shipped model
is trained on all days.

## Metrics

**Leave-days-out cross-validation**: the {len(set(home.days.tolist()))} calendar days in
{hp.n_folds} blocks of consecutive days; each fold's model is trained on the other
days, exported to ONNX and scored in onnxruntime on its held-out days; the held-out
predictions of all folds are pooled. Baselines scored the same way: majority class
of the training folds, and the most frequent class per half hour of the day.

| metric | model (fp32) | time-of-day baseline | majority baseline | other home |
|---|---|---|---|---|
| macro-F1 (8 classes) | **{m["cv_macro_f1"]:.4f}** | {m["baseline_time_of_day_macro_f1"]:.4f} | {m["baseline_majority_macro_f1"]:.4f} | {m["other_home_macro_f1"]:.4f} |
| accuracy | **{m["cv_accuracy"]:.4f}** | {m["baseline_time_of_day_accuracy"]:.4f} | {m["baseline_majority_accuracy"]:.4f} | {m["other_home_accuracy"]:.4f} |

Per class (CV, held-out days; support in slices):

| class | slices | precision | recall | F1 | F1 time-of-day | F1 other home |
|---|---|---|---|---|---|---|
{class_rows}

![Row-normalized confusion matrices, leave-days-out CV](../../../docs/img/routine_confusion.png)

**Other home, no retraining.** The same recording seen as a different home: the
microwave, dishwasher, washing machine and freezer are dropped, the four cupboards
become one generic kitchen cupboard sensor (openings that overlap count once), and
every sensor gets a new id. The fold models score their held-out days through this
mapping with an unchanged input shape:

| | this apartment | other home | change |
|---|---|---|---|
| CV macro-F1 (held-out days) | {m["cv_macro_f1"]:.4f} | **{m["other_home_macro_f1"]:.4f}** | {-m["other_home_macro_f1_drop"]:+.4f} |
| CV accuracy (held-out days) | {m["cv_accuracy"]:.4f} | {m["other_home_accuracy"]:.4f} | {m["other_home_accuracy"] - m["cv_accuracy"]:+.4f} |
| shipped model, all days, macro-F1 (in-sample) | {m["alldays_macro_f1_fp32"]:.4f} | {m["other_home_alldays_macro_f1_fp32"]:.4f} | {m["other_home_alldays_macro_f1_fp32"] - m["alldays_macro_f1_fp32"]:+.4f} |

Most of the loss is `dinner` (no microwave; the pans cupboard no longer stands out
from the other cupboards); the shipped model's
in-sample numbers drop more because it fits this apartment's days more closely. The
all-days rows are recomputed from the ONNX files by `models.routine.evaluate`.

{CROSS_HOME_SECTION}
## Precision variants

| variant | file | bytes | CV macro-F1 | CV accuracy | all-days macro-F1 | latency p50 / p99 (µs, 1 row) |
|---|---|---|---|---|---|---|
{variants}

Served: **{served}** ({served_reason}). int8 (`models.export.quantize_int8`: int8
weights, activations quantized per call) is served only if it is faster than fp32 in
onnxruntime on the build machine and its CV macro-F1 is within
{ctx.int8_max_f1_loss * 100:g} pp of fp32's; otherwise fp32. The per-call activation
quantization of the first layer's input is what costs int8 accuracy here: the
standardized indicators of rare groups are large outliers that set the 8-bit range.
Latencies are measured on the build machine and vary between builds (the ONNX files
do not). Max abs difference of the probabilities, torch vs onnxruntime fp32:
{m["onnx_parity_max_abs_diff"]:.1e}.

## Limits

- One single-person apartment, one occupant's habits, 4 weeks (February to March
  2008), 14 sensors. Another home, household or season shifts every feature;
  the "other home" check only perturbs the sensor set of the same recording, it is
  not data from another home. Expect lower accuracy until personalized.
- Few sensors and none in the living room or bedroom besides a door: `idle` (no
  annotated activity) is hard to tell from short activities, and `drink` ({counts["drink"]}
  slices) and `breakfast` ({counts["breakfast"]}) have very little support; their
  per-class numbers are noisy.
- Moving a sensor to another area is a harsher shift than dropping or merging
  sensors: a home whose toilet is inside the bathroom (flush in `bathroom`, no
  toilet door) confuses `shower` with `toilet` visits. Map sensors to the areas
  they are really in, and personalize.
- `away` and `asleep` are inferred from silence plus the last area used and the time
  of day. A nap, a night away or a guest breaks that; a second person breaks most.
- Annotation gaps count as `idle`, and a slice touched by an annotation for even a
  second takes its class, so boundaries are fuzzy by up to a minute.
- Hyper-parameters (epochs, class-weight power, width) were chosen on the same
  cross-validation, so the CV numbers are slightly optimistic (seeds 0/1/2 of this
  recipe gave CV macro-F1 0.649/0.644/0.642). The all-days numbers are in-sample.
- Times are local wall time; hour-of-day features assume the hub's local time zone.
"""
