"""Rolling health statistics per model version: predictions, errors, latency, agreement.

Each served version (``(model, version)``; its role, active or candidate, is looked up
when the stats are read, so a promoted candidate keeps its history) has a
:class:`RollingStats`: a sliding window of the last ``window_seconds`` (default 10
minutes), holding at most ``max_records`` (default 10,000) session.run calls and as
many outcome records; whichever limit is hit first bounds the window. Everything is
recorded and read on the event loop thread, so no locks are needed.

- predictions / errors: rows answered / rows whose session.run failed (a batch of n
  counts n); error_rate = errors / (predictions + errors).
- latency: session.run time per call (a batch is one call), measured in the worker
  thread around ``session.run`` only (no queueing), p50 and p99 over the window, and
  the number of calls they rest on.
- agreement (a candidate in shadow): compared rows and rows that agree with the
  active version (same label for classifiers; max abs output difference within the
  configured tolerance for regressors).
- non-finite: rows whose output held NaN or infinity; they also count as errors (such a
  row is never served, see ``services.inference.outputs``).
- paired latency ratio (a candidate in shadow): per batch it ran in the background, its
  session.run cost over the active version's on the very same batch (CPU time on the
  CPU provider, ``services.inference.registry.run_cost``); the snapshot reports the
  median (shadow batches are coalesced and larger than live calls, and one
  scheduling stall on a busy machine must not fail a model).
- outputs: one summary value per answered row (the label index of a classifier, the
  first output of a regressor), for the output-distribution comparison of candidate and
  active (``services.inference.outputs.output_shift``).

:meth:`HealthBook.reset` starts a version's window afresh: a candidate moving from
shadow to A/B is judged on what it served live, not on its shadow runs.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

DEFAULT_WINDOW_SECONDS = 600.0
DEFAULT_MAX_RECORDS = 10_000


@dataclass(frozen=True)
class HealthSnapshot:
    predictions: int = 0
    errors: int = 0
    latency_p50_seconds: float = 0.0
    latency_p99_seconds: float = 0.0
    compared: int = 0
    agreed: int = 0
    non_finite: int = 0
    # Median of (candidate / active) session.run time on the batches it shadowed (0: none).
    paired_latency_ratio: float = 0.0
    # session.run calls the latency percentiles rest on.
    latency_calls: int = 0

    @property
    def error_rate(self) -> float:
        total = self.predictions + self.errors
        return self.errors / total if total else 0.0

    @property
    def agreement_rate(self) -> float:
        return self.agreed / self.compared if self.compared else 0.0


class RollingStats:
    """The sliding window of one version (see the module docstring)."""

    def __init__(
        self,
        window_seconds: float = DEFAULT_WINDOW_SECONDS,
        max_records: int = DEFAULT_MAX_RECORDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window_seconds = window_seconds
        self._clock = clock
        # (time, session.run seconds)
        self._runs: deque[tuple[float, float]] = deque(maxlen=max_records)
        # (time, predictions, errors, compared, agreed, non_finite)
        self._outcomes: deque[tuple[float, int, int, int, int, int]] = deque(maxlen=max_records)
        # (time, this version's session.run time / the active's, on a batch it shadowed)
        self._paired: deque[tuple[float, float]] = deque(maxlen=max_records)
        # (time, one summary value per answered row)
        self._outputs: deque[tuple[float, npt.NDArray[np.float64]]] = deque(maxlen=max_records)

    def run(self, seconds: float) -> None:
        self._runs.append((self._clock(), seconds))

    def paired(self, cost: float, active_cost: float) -> None:
        self._paired.append((self._clock(), cost / max(active_cost, 1e-9)))

    def outputs(self, values: npt.NDArray[np.float64]) -> None:
        if len(values):
            self._outputs.append((self._clock(), values))

    def outcome(
        self,
        predictions: int = 0,
        errors: int = 0,
        compared: int = 0,
        agreed: int = 0,
        non_finite: int = 0,
    ) -> None:
        self._outcomes.append((self._clock(), predictions, errors, compared, agreed, non_finite))

    def _prune(self) -> None:
        oldest = self._clock() - self.window_seconds
        for q in (self._runs, self._outcomes, self._paired, self._outputs):
            while q and q[0][0] < oldest:
                q.popleft()

    def output_values(self) -> npt.NDArray[np.float64]:
        """The output summaries of the window, oldest first."""
        self._prune()
        if not self._outputs:
            return np.empty(0)
        return np.concatenate([v for _, v in self._outputs])

    def snapshot(self) -> HealthSnapshot:
        self._prune()
        if self._runs:
            p50, p99 = np.percentile(np.fromiter((s for _, s in self._runs), float), [50, 99])
        else:
            p50 = p99 = 0.0
        paired = 0.0
        if self._paired:
            paired = float(np.median(np.fromiter((r for _, r in self._paired), float)))
        totals = [0, 0, 0, 0, 0]
        for _, *counts in self._outcomes:
            for i, c in enumerate(counts):
                totals[i] += c
        return HealthSnapshot(
            predictions=totals[0],
            errors=totals[1],
            latency_p50_seconds=float(p50),
            latency_p99_seconds=float(p99),
            compared=totals[2],
            agreed=totals[3],
            non_finite=totals[4],
            paired_latency_ratio=paired,
            latency_calls=len(self._runs),
        )


class HealthBook:
    """:class:`RollingStats` per ``(model, version)``, created on first use."""

    def __init__(
        self,
        window_seconds: float = DEFAULT_WINDOW_SECONDS,
        max_records: int = DEFAULT_MAX_RECORDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window_seconds = window_seconds
        self._max_records = max_records
        self._clock = clock
        self._stats: dict[tuple[str, str], RollingStats] = {}

    def of(self, model: str, version: str) -> RollingStats:
        key = (model, version)
        stats = self._stats.get(key)
        if stats is None:
            stats = RollingStats(self.window_seconds, self._max_records, self._clock)
            self._stats[key] = stats
        return stats

    def snapshot(self, model: str, version: str) -> HealthSnapshot:
        stats = self._stats.get((model, version))
        return stats.snapshot() if stats is not None else HealthSnapshot()

    def stats(self, model: str, version: str) -> RollingStats | None:
        return self._stats.get((model, version))

    def reset(self, model: str, version: str) -> None:
        """Start the window of ``version`` afresh (see the module docstring)."""
        self._stats.pop((model, version), None)

    def retain(self, model: str, versions: set[str]) -> None:
        """Forget the stats of ``model``'s versions that no longer serve."""
        for key in [k for k in self._stats if k[0] == model and k[1] not in versions]:
            del self._stats[key]
