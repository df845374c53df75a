"""Input drift: live per-feature histograms against the manifest's training reference.

A model whose active manifest has a ``reference`` (``models/reference.py``) gets a
:class:`DriftMonitor`. Every input it serves (the whole request, whichever version
answered it) is counted into the reference bins of each monitored feature; windowed
inputs ``(..., time, features)`` count every time step. Binning is the reference's:
bin ``i`` holds ``edges[i-1] < v <= edges[i]`` with open ends, i.e.
``searchsorted(edges, v, side="left")``, computed for all features at once against
an edge matrix padded with +inf.

**Window.** Counts go into time buckets (default: hourly, the last 24 kept), so the
live histogram is the last 24 h of traffic, give or take the current bucket; older
buckets simply fall out. Only counts are kept, never input values.

**Statistics**, per feature, with ``p_ref`` the reference probabilities and
``p_live`` the live share per bin:

- PSI = sum_i (q_live_i - q_ref_i) * ln(q_live_i / q_ref_i), where the smoothed
  ``q = (p + EPSILON) / (1 + EPSILON * bins)`` keeps empty bins finite (EPSILON=1e-4).
- KS = max_i |CDF_live(edge_i) - CDF_ref(edge_i)| over the bin edges (unsmoothed).

A feature alerts when it has at least ``min_samples`` live values and PSI >
``psi_alert`` (default 0.25, the customary "significant shift") or KS > ``ks_alert``
(default 0.3); the model alerts when any feature does. Gauges
``roost_inference_feature_psi{model,feature}``, ``roost_inference_feature_ks{model,
feature}`` and ``roost_inference_drift_alert{model}`` carry the results: feature
names are labels, values never are.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from prometheus_client import Gauge

from models.manifest import Manifest

EPSILON = 1e-4

FEATURE_PSI = Gauge(
    "roost_inference_feature_psi",
    "Population stability index of a feature's live inputs vs its training reference.",
    ["model", "feature"],
)
FEATURE_KS = Gauge(
    "roost_inference_feature_ks",
    "Kolmogorov-Smirnov statistic (over the reference bin edges) of a feature's live inputs.",
    ["model", "feature"],
)
DRIFT_ALERT = Gauge(
    "roost_inference_drift_alert",
    "1 when any feature of the model drifts beyond the PSI or KS threshold.",
    ["model"],
)


@dataclass(frozen=True)
class DriftSettings:
    psi_alert: float = 0.25
    ks_alert: float = 0.3
    min_samples: int = 500
    bucket_seconds: float = 3600.0
    buckets: int = 24

    @property
    def window_seconds(self) -> float:
        return self.bucket_seconds * self.buckets


@dataclass(frozen=True)
class FeatureDriftStat:
    feature: str
    psi: float
    ks: float
    alert: bool
    samples: int


def psi_ks(
    live_counts: npt.NDArray[np.int64], ref_probs: npt.NDArray[np.float64]
) -> tuple[float, float]:
    """PSI and KS of one feature from its live bin counts and reference probabilities."""
    psi, ks = psi_ks_matrix(
        live_counts[None, :], ref_probs[None, :], np.array([len(ref_probs)], dtype=np.intp)
    )
    return float(psi[0]), float(ks[0])


def psi_ks_matrix(
    live: npt.NDArray[np.int64], ref: npt.NDArray[np.float64], bins: npt.NDArray[np.intp]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """PSI and KS of many features at once: rows are features, padded to a common number
    of bins (``bins[f]`` are real; the padding holds zeros and is ignored)."""
    n = live.sum(axis=1)
    p_live = live / np.maximum(n, 1)[:, None]
    valid = np.arange(live.shape[1])[None, :] < bins[:, None]
    scale = (1.0 + EPSILON * bins)[:, None]
    q_live = (p_live + EPSILON) / scale
    q_ref = (ref + EPSILON) / scale
    psi = np.where(valid, (q_live - q_ref) * np.log(q_live / q_ref), 0.0).sum(axis=1)
    # CDFs at the edges: cumulative shares of bins 0..i for i < bins - 1.
    at_edges = np.arange(live.shape[1])[None, :] < (bins - 1)[:, None]
    gaps = np.abs(np.cumsum(p_live, axis=1) - np.cumsum(ref, axis=1))
    ks = np.where(at_edges, gaps, 0.0).max(axis=1, initial=0.0)
    empty = n == 0
    return np.where(empty, 0.0, psi), np.where(empty, 0.0, ks)


class DriftMonitor:
    """Live histograms of one model's monitored features (see the module docstring)."""

    def __init__(
        self,
        manifest: Manifest,
        settings: DriftSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.model = manifest.name
        self.reference = manifest.reference
        self.settings = settings
        self._clock = clock
        names = manifest.input.feature_names()
        self._n_inputs = len(names)
        self.features = [f for f in names if f in manifest.reference]
        self._columns = np.array([names.index(f) for f in self.features], dtype=np.intp)
        refs = [manifest.reference[f] for f in self.features]
        width = max((len(r.edges) for r in refs), default=0)
        self._edges = np.full((len(refs), width), np.inf)
        self._ref = np.zeros((len(refs), width + 1))
        self._bins = np.array([len(r.probs) for r in refs], dtype=np.intp)
        for i, r in enumerate(refs):
            self._edges[i, : len(r.edges)] = r.edges
            probs = np.asarray(r.probs, dtype=np.float64)
            self._ref[i, : len(probs)] = probs / probs.sum()
        self._offsets = np.arange(len(refs), dtype=np.intp) * (width + 1)
        self._buckets: dict[int, npt.NDArray[np.int64]] = {}
        # observe() may run in a worker thread (large batches) while stats() runs on the
        # event loop: the buckets are only touched under this lock.
        self._lock = threading.Lock()

    @property
    def monitored(self) -> bool:
        return bool(self.features)

    def observe(self, x: npt.NDArray[np.generic]) -> None:
        """Count a batch of inputs ``(n, ..., n_features)`` (values are not kept)."""
        if not self.monitored:
            return
        flat = np.asarray(x, dtype=np.float64).reshape(-1, self._n_inputs)[:, self._columns]
        # bin = number of edges strictly below the value (searchsorted side="left").
        bins = (flat[:, :, None] > self._edges[None, :, :]).sum(axis=2)
        width = self._ref.shape[1]
        counts = np.bincount(
            (bins + self._offsets[None, :]).ravel(), minlength=len(self.features) * width
        ).reshape(len(self.features), width)
        bucket = int(self._clock() // self.settings.bucket_seconds)
        with self._lock:
            current = self._buckets.get(bucket)
            if current is None:
                self._buckets[bucket] = counts.astype(np.int64)
                self._expire(bucket)
            else:
                current += counts

    def cost(self, x: npt.NDArray[np.generic]) -> int:
        """Comparisons :meth:`observe` makes for ``x`` (to decide where to run it)."""
        return (x.size // max(self._n_inputs, 1)) * int(self._edges.size)

    def _expire(self, bucket: int) -> None:
        for b in [b for b in self._buckets if b <= bucket - self.settings.buckets]:
            del self._buckets[b]

    def live_counts(self) -> npt.NDArray[np.int64]:
        """Counts per (monitored feature, bin) over the window."""
        total = np.zeros(self._ref.shape, dtype=np.int64)
        with self._lock:
            self._expire(int(self._clock() // self.settings.bucket_seconds))
            for counts in self._buckets.values():
                total += counts
        return total

    def stats(self) -> list[FeatureDriftStat]:
        s = self.settings
        live = self.live_counts()
        psi, ks = psi_ks_matrix(live, self._ref, self._bins)
        samples = live.sum(axis=1)
        alert = (samples >= s.min_samples) & ((psi > s.psi_alert) | (ks > s.ks_alert))
        return [
            FeatureDriftStat(f, float(psi[i]), float(ks[i]), bool(alert[i]), int(samples[i]))
            for i, f in enumerate(self.features)
        ]

    def export(self) -> list[FeatureDriftStat]:
        """Compute the statistics and publish them as gauges."""
        stats = self.stats()
        for st in stats:
            FEATURE_PSI.labels(self.model, st.feature).set(st.psi)
            FEATURE_KS.labels(self.model, st.feature).set(st.ks)
        DRIFT_ALERT.labels(self.model).set(1.0 if any(st.alert for st in stats) else 0.0)
        return stats
