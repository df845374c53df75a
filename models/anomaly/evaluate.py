"""Evaluate the shipped anomaly artifacts on injected faults (torch-free).

Run from the repository root (or as ``roost models evaluate anomaly``)::

    python -m models.anomaly.evaluate [--model-dir models/artifacts/anomaly]

Every precision in the manifest is run with onnxruntime on the test period (the
chronologically last 20 % of the data) and on four copies of it with injected,
seeded faults, one fault kind per copy. Definitions:

- An *alert* is ``anomaly_score >= anomaly_threshold`` at a 10-minute step.
- An *alert episode* is a run of alert steps, where alerts less than an hour apart
  are one episode (the hub would not notify twice within the hour).
- *Recall* (event level): an event counts as detected if an alert fires at any of
  its steps.
- *Precision* (episode level): of the alert episodes on a faulted copy, the fraction
  that overlap an event or the ``WINDOW - 1`` steps after it (while the faulty
  readings are still in the input window). It depends on how dense the injected
  events are (40 per kind in 27 days).
- *Time to detect*: minutes from an event's first faulty reading to the first alert
  within the event (0 = on the first faulty reading), median over detected events.
- *False alarms per day*: alert episodes per day on the clean (un-faulted) period.

The same functions compute the metrics written into the manifest at training time,
so :func:`evaluate` reproduces them from the shipped files.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from rich.console import Console
from rich.table import Table

from models.anomaly.data import (
    EVENTS_PER_KIND,
    FAULT_KINDS,
    FAULT_SEED,
    MIN_GAP_STEPS,
    ApplianceData,
    FaultEvent,
    FaultKind,
    inject,
    load_appliances,
    split,
    window_inputs,
)
from models.anomaly.spec import ANOMALY_SCORE, ANOMALY_THRESHOLD, EXPECTED_WH, WINDOW
from models.datasets import DatasetMissing, add_data_dir_argument, find_data_dir
from models.export import session
from models.manifest import Manifest, ManifestError, load_manifest, shipped_models_dir
from models.report import comparison_table, within

F32Array = npt.NDArray[np.float32]
F64Array = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

NAME = "anomaly"
STEP_MINUTES = 10.0
STEPS_PER_DAY = 144.0
MERGE_GAP_STEPS = 6  # alerts at most this many steps apart are one episode
GRACE_STEPS = WINDOW - 1  # after an event its readings are still in the input window
SUMMARY = "overall"
# Metric keys compared between fp32 and int8 when choosing the served precision.
DETECTION_KEYS = tuple(f"{m}_{k}" for k in (*FAULT_KINDS, SUMMARY) for m in ("recall", "precision"))


# --- Episodes, calibration and detection metrics ---------------------------------------


def alert_episodes(alert: BoolArray, merge_gap: int = MERGE_GAP_STEPS) -> list[tuple[int, int]]:
    """Alert episodes ``[first, last + 1)``; alerts at most ``merge_gap`` steps apart merge."""
    idx = np.flatnonzero(alert)
    if idx.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(idx) > merge_gap)
    firsts = np.concatenate([[idx[0]], idx[breaks + 1]])
    lasts = np.concatenate([idx[breaks], [idx[-1]]])
    return [(int(a), int(b) + 1) for a, b in zip(firsts, lasts, strict=True)]


def episodes_per_day(alert: BoolArray) -> float:
    return len(alert_episodes(alert)) / (len(alert) / STEPS_PER_DAY)


def calibrate_threshold(score: F64Array, budget_per_day: float) -> float:
    """The lowest threshold whose alerts (``score >= threshold``) on this clean period stay
    within ``budget_per_day`` episodes per day, scanning down from the highest score and
    stopping at the first violation. Placed midway between two observed scores, so a
    float32 rounding of the score cannot flip an alert."""
    values = np.unique(score[np.isfinite(score)])[::-1]
    if values.size < 2:
        raise ValueError("cannot calibrate a threshold on fewer than two distinct scores")
    days = len(score) / STEPS_PER_DAY
    chosen = -1
    for i, v in enumerate(values[:-1]):
        if len(alert_episodes(score >= v)) / days > budget_per_day:
            break
        chosen = i
    if chosen < 0:  # not even one episode fits: just above the highest score
        return float(values[0] + 0.5 * (values[0] - values[1]))
    return float(0.5 * (values[chosen] + values[chosen + 1]))


@dataclass(frozen=True)
class EventOutcome:
    event: FaultEvent
    detected: bool
    ttd_min: float  # NaN when not detected


def event_outcomes(alert: BoolArray, events: list[FaultEvent], offset: int) -> list[EventOutcome]:
    """``alert[i]`` is the alert at row ``offset + i``."""
    out: list[EventOutcome] = []
    for ev in events:
        hits = np.flatnonzero(alert[ev.start - offset : ev.stop - offset])
        ttd = float(hits[0]) * STEP_MINUTES if hits.size else float("nan")
        out.append(EventOutcome(ev, bool(hits.size), ttd))
    return out


def true_episodes(alert: BoolArray, events: list[FaultEvent], offset: int) -> tuple[int, int]:
    """(episodes overlapping an event or its grace steps, all episodes)."""
    eps = alert_episodes(alert)
    spans = [(ev.start - offset, ev.stop - offset + GRACE_STEPS) for ev in events]
    hits = sum(1 for a, b in eps if any(a < s_stop and s_start < b for s_start, s_stop in spans))
    return hits, len(eps)


def _median_ttd(outcomes: list[EventOutcome]) -> float:
    ttd = [o.ttd_min for o in outcomes if o.detected]
    return float(np.median(ttd)) if ttd else -1.0


def detection_metrics(
    clean_alert: BoolArray,
    faulted_alert: dict[FaultKind, BoolArray],
    events: dict[FaultKind, list[FaultEvent]],
    offset: int,
) -> dict[str, float]:
    """Recall, precision and median time to detect per fault kind and overall (pooled),
    and false alarms per day on the clean period. Median TTD is -1 if nothing is detected."""
    metrics: dict[str, float] = {"false_alarms_per_day": episodes_per_day(clean_alert)}
    all_outcomes: list[EventOutcome] = []
    all_true = all_eps = 0
    for kind in FAULT_KINDS:
        outcomes = event_outcomes(faulted_alert[kind], events[kind], offset)
        n_true, n_eps = true_episodes(faulted_alert[kind], events[kind], offset)
        metrics[f"recall_{kind}"] = float(np.mean([o.detected for o in outcomes]))
        metrics[f"precision_{kind}"] = n_true / n_eps if n_eps else 0.0
        metrics[f"ttd_median_min_{kind}"] = _median_ttd(outcomes)
        all_outcomes += outcomes
        all_true += n_true
        all_eps += n_eps
    metrics[f"recall_{SUMMARY}"] = float(np.mean([o.detected for o in all_outcomes]))
    metrics[f"precision_{SUMMARY}"] = all_true / all_eps if all_eps else 0.0
    metrics[f"ttd_median_min_{SUMMARY}"] = _median_ttd(all_outcomes)
    return metrics


# --- Running the ONNX model ------------------------------------------------------------


def run_onnx(path: Path, x: F32Array, input_name: str = "features") -> F32Array:
    sess = session(path)
    (out,) = sess.run(None, {input_name: x})
    return np.asarray(out, dtype=np.float32)


@dataclass(frozen=True)
class FaultRun:
    """One faulted copy of the test period: readings, events and model outputs."""

    energy: F64Array
    events: list[FaultEvent]
    outputs: F32Array  # [test rows, outputs]


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, float]  # keys without the precision suffix
    test_start: int
    clean_outputs: F32Array
    faults: dict[FaultKind, FaultRun]


def evaluate_onnx(
    path: Path,
    data: ApplianceData,
    *,
    threshold: float,
    fault_seed: int = FAULT_SEED,
    events_per_kind: int = EVENTS_PER_KIND,
) -> Evaluation:
    """Expected-energy MAE and fault detection of one ONNX file on the test period."""
    parts = split(len(data))
    v_start, v_stop = parts.validation
    t_start, t_stop = parts.test
    val_out = run_onnx(path, window_inputs(data, v_start, v_stop))
    clean = run_onnx(path, window_inputs(data, t_start, t_stop))
    faults: dict[FaultKind, FaultRun] = {}
    for kind in FAULT_KINDS:
        energy, events = inject(
            data.energy, kind, t_start, t_stop, seed=fault_seed, count=events_per_kind
        )
        out = run_onnx(path, window_inputs(data, t_start, t_stop, energy))
        faults[kind] = FaultRun(energy, events, out)
    metrics = detection_metrics(
        clean[:, ANOMALY_SCORE] >= threshold,
        {k: f.outputs[:, ANOMALY_SCORE] >= threshold for k, f in faults.items()},
        {k: f.events for k, f in faults.items()},
        offset=t_start,
    )
    observed = data.energy[t_start:t_stop]
    metrics["test_mae_wh"] = float(np.mean(np.abs(clean[:, EXPECTED_WH] - observed)))
    metrics["val_false_alarms_per_day"] = episodes_per_day(val_out[:, ANOMALY_SCORE] >= threshold)
    return Evaluation(metrics, t_start, clean, faults)


def evaluate(model_dir: Path, data_dir: Path | None) -> dict[str, float]:
    """The headline metrics of every shipped precision, keyed like the manifest metrics
    (``<metric>_<precision>``), recomputed from the ONNX files and the data in
    ``data_dir``."""
    manifest = load_manifest(model_dir)
    data = load_appliances(data_dir)
    m = manifest.metrics
    threshold = m["anomaly_threshold"]
    seed = int(m["fault_seed"])
    count = int(m["events_per_kind"])
    out: dict[str, float] = {}
    for variant, info in sorted(manifest.variants.items()):
        ev = evaluate_onnx(
            model_dir / info.file, data, threshold=threshold, fault_seed=seed, events_per_kind=count
        )
        out |= {f"{k}_{variant}": round(v, 6) for k, v in ev.metrics.items()}
    return out


# Recomputed metrics agree with the manifest within models.report.TOLERANCE.
within_tolerance = within


# --- Plot (the training recipe draws the docs figure) ----------------------------------


def plot_faults(ev: Evaluation, data: ApplianceData, path: Path, title: str) -> None:
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
    fig.suptitle(title)
    fig.tight_layout(rect=(0.0, 0.0, 1.0, 0.96))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)


# --- CLI -------------------------------------------------------------------------------


def _fault_table(manifest: Manifest, metrics: dict[str, float]) -> Table:
    table = Table(title=f"{manifest.name} {manifest.version}: injected faults (test period)")
    table.add_column("fault")
    variants = sorted(manifest.variants)
    for v in variants:
        table.add_column(f"recall {v}", justify="right")
        table.add_column(f"precision {v}", justify="right")
        table.add_column(f"TTD median {v}", justify="right")
    for kind in (*FAULT_KINDS, SUMMARY):
        cells: list[str] = []
        for v in variants:
            cells += [
                f"{metrics[f'recall_{kind}_{v}']:.3f}",
                f"{metrics[f'precision_{kind}_{v}']:.3f}",
                f"{metrics[f'ttd_median_min_{kind}_{v}']:.0f} min",
            ]
        table.add_row(kind, *cells)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model-dir", type=Path, default=shipped_models_dir() / NAME)
    add_data_dir_argument(parser)
    args = parser.parse_args(argv)
    console = Console()
    try:
        manifest = load_manifest(args.model_dir)
        metrics = evaluate(args.model_dir, find_data_dir(args.data_dir))
    except (DatasetMissing, ManifestError) as e:
        Console(stderr=True).print(f"[red]error:[/] {e}")
        return 2
    console.print(_fault_table(manifest, metrics))
    table, ok = comparison_table(
        f"recomputed vs manifest ({args.model_dir})",
        {k: metrics[k] for k in sorted(metrics)},
        manifest.metrics,
    )
    console.print(table)
    served = next((v for v, i in manifest.variants.items() if i.file == manifest.file), "?")
    console.print(
        f"served: {manifest.file} ({served}); alert when anomaly_score >= "
        f"{manifest.metrics['anomaly_threshold']:g}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
