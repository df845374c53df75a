"""The fleet server's privacy accountant: the global model's cumulative (epsilon, delta).

Each released round is a Gaussian mechanism of noise multiplier sigma on every household's
data (the sum of at least ``min_participants`` hubs' clipped deltas carries noise of std
sigma * C, :mod:`services.personalization.federated`), with every hub in the round
(sampling rate 1). The rounds compose; Opacus's RDP accountant gives epsilon at the
fleet's delta. The server asks :meth:`FleetAccountant.allows_next` before each round and
stops when one more round would exceed the fleet budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


def rounds_epsilon(noise_multiplier: float, rounds: int, delta: float) -> float:
    """epsilon after ``rounds`` Gaussian releases of ``noise_multiplier`` (q = 1), at ``delta``."""
    if rounds <= 0:
        return 0.0
    from opacus.accountants import RDPAccountant  # type: ignore[import-untyped]  # noqa: PLC0415

    acc = RDPAccountant()
    acc.history = [(noise_multiplier, 1.0, rounds)]
    return float(acc.get_epsilon(delta))


@dataclass
class FleetAccountant:
    """Cumulative epsilon of the global model over the rounds released so far."""

    noise_multiplier: float
    epsilon_budget: float
    delta: float
    rounds: int = field(default=0)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0):
            raise ValueError("noise_multiplier: must be a finite number > 0")
        if not (math.isfinite(self.epsilon_budget) and self.epsilon_budget > 0):
            raise ValueError("epsilon_budget: must be a finite number > 0")
        if not 0 < self.delta < 1:
            raise ValueError("delta: must be in (0, 1)")

    @property
    def epsilon(self) -> float:
        return rounds_epsilon(self.noise_multiplier, self.rounds, self.delta)

    def allows_next(self) -> bool:
        """Whether one more round stays within the fleet budget."""
        nxt = rounds_epsilon(self.noise_multiplier, self.rounds + 1, self.delta)
        return nxt <= self.epsilon_budget

    def record_round(self) -> float:
        """Count a released round; returns the cumulative epsilon after it."""
        if not self.allows_next():
            raise RuntimeError("the fleet budget does not allow another round")
        self.rounds += 1
        return self.epsilon
