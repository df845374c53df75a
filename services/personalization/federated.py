"""The household-level DP delta a hub may send to the fleet (issue 16, hub side).

A federated round asks the hub for its model delta against the fleet's global model.
What may leave the hub is only what this module produces:

* the delta is **clipped** to L2 norm ``clip_norm`` (C): whatever the household's data,
  its whole contribution to the fleet's sum moves by at most C (household-level, i.e.
  user-level, sensitivity);
* the hub adds its **share of the Gaussian noise**: ``N(0, (sigma * C)^2 / t)`` per
  coordinate, where ``t`` is the fewest hubs a round may aggregate (the fleet's
  ``min_participants``). The sum of at least ``t`` honest hubs' deltas then carries noise
  of std at least ``sigma * C`` -- a Gaussian mechanism of noise multiplier ``sigma`` on
  the household's data, which is what both the hub's ledger and the server's accountant
  charge. Secure aggregation (Flower's SecAgg+) keeps the server from seeing any one
  hub's (less noised) delta;
* **before** the delta is computed, the round's mechanism (``gaussian``, ``sigma``, one
  release) is reserved in the privacy ledger under the household scope with job id
  ``fleet-<round_id>``: a hub without budget is refused here (FailedPrecondition, nothing
  computed) and sits the round out. The reservation is idempotent per round, so a
  retried round is never charged twice.

Trust assumption, stated where it is used: the guarantee ``sigma`` assumes at least ``t``
hubs add their share honestly. Against a server colluding with every other hub, only this
hub's own share protects it (noise multiplier ``sigma / sqrt(t)``); docs/fleet.md says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import numpy as np
import numpy.typing as npt

from services.kit.errors import InvalidArgument
from services.personalization.ledger import PrivacyLedger
from services.personalization.ledger_records import Mechanism, Reservation

F32Array = npt.NDArray[np.float32]

#: The ledger job id of a fleet round (one reservation per round, idempotent).
JOB_PREFIX: Final = "fleet-"
#: A round id: what the SuperLink names its rounds (digits, letters, dashes).
_MAX_ROUND_ID: Final = 64


@dataclass(frozen=True)
class RoundParams:
    """What the fleet asks of one round; checked before anything is charged."""

    round_id: str
    clip_norm: float
    noise_multiplier: float
    min_participants: int

    def __post_init__(self) -> None:
        rid = self.round_id
        if not rid or len(rid) > _MAX_ROUND_ID or not all(c.isalnum() or c in "-_." for c in rid):
            raise InvalidArgument("round_id: 1-64 letters, digits, '-', '_' or '.'")
        if not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise InvalidArgument("clip_norm: must be a finite number > 0")
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0):
            raise InvalidArgument("noise_multiplier: must be a finite number > 0")
        if self.min_participants < 1:
            raise InvalidArgument("min_participants: must be >= 1")

    @property
    def noise_std(self) -> float:
        """This hub's share: the std per coordinate of the noise it adds."""
        return self.noise_multiplier * self.clip_norm / math.sqrt(self.min_participants)


def clip_to_norm(delta: npt.ArrayLike, clip_norm: float) -> F32Array:
    """``delta`` scaled down to L2 norm at most ``clip_norm`` (float64 norm, float32 out).

    A non-finite delta (NaN or inf anywhere) is refused: its norm is undefined, so no
    clipping could bound it."""
    d = np.asarray(delta, dtype=np.float64).ravel()
    if not np.all(np.isfinite(d)):
        raise InvalidArgument("delta: not finite; nothing can be sent")
    norm = float(np.linalg.norm(d))
    if norm > clip_norm:
        d = d * (clip_norm / norm)
    out = d.astype(np.float32)
    # float32 rounding can push the norm a hair over C: scale again until it is not.
    while float(np.linalg.norm(out.astype(np.float64))) > clip_norm:
        out = (out.astype(np.float64) * (1 - 1e-6)).astype(np.float32)
    return out


def noised_delta(delta: npt.ArrayLike, params: RoundParams, rng: np.random.Generator) -> F32Array:
    """The clipped delta plus this hub's share of the Gaussian noise: the only thing a
    round may send."""
    clipped = clip_to_norm(delta, params.clip_norm)
    noise = rng.normal(0.0, params.noise_std, size=clipped.shape)
    return (clipped.astype(np.float64) + noise).astype(np.float32)


def reserve_round(
    ledger: PrivacyLedger,
    scope: str,
    params: RoundParams,
    *,
    privacy_unit: str,
    now: datetime | None = None,
) -> Reservation:
    """Charge the round's mechanism to ``scope`` before anything is computed or sent.

    The round protects the whole household (the delta is clipped as one unit), which
    implies the same epsilon for any smaller unit: it is charged in the household's
    configured ``privacy_unit`` so that it composes with the DP-SGD runs in that scope.
    FailedPrecondition (nothing recorded) when the household's budget would be exceeded:
    the hub sits the round out."""
    mechanism = Mechanism.gaussian(noise_multiplier=params.noise_multiplier)
    return ledger.reserve(
        scope,
        mechanism,
        job_id=JOB_PREFIX + params.round_id,
        privacy_unit=privacy_unit,
        now=now,
    )


def encode(delta: F32Array) -> bytes:
    """float32 little-endian, flattened: the wire form of ``noised_delta``."""
    return np.asarray(delta, dtype="<f4").ravel().tobytes()


__all__ = [
    "JOB_PREFIX",
    "RoundParams",
    "clip_to_norm",
    "encode",
    "noised_delta",
    "reserve_round",
]
