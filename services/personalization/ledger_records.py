"""The privacy ledger's values, validated when they are made.

What is charged (:class:`Mechanism`), under which budget (:class:`BudgetPolicy`, over a
sliding window of ``period_days``), and what the ledger hands back
(:class:`Reservation`, :class:`LedgerEntry`, :class:`BudgetReport`). Invalid values are
:class:`InvalidArgument` naming the field, never echoing a value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Literal

from services.kit.errors import InvalidArgument
from services.personalization.accounting import AccountantName

MechanismKind = Literal["dp_sgd", "gaussian"]
Status = Literal["reserved", "committed", "released"]

#: Sanity bound on the steps of one mechanism.
MAX_STEPS: Final = 10_000_000
_KINDS: Final = ("dp_sgd", "gaussian")
_ACCOUNTANTS: Final = ("rdp", "prv")


def number(field: str, value: object) -> float:
    """``value`` as a finite float; InvalidArgument naming ``field`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(f"{field}: must be a number")
    result = float(value)
    if not math.isfinite(result):
        raise InvalidArgument(f"{field}: must be finite")
    return result


def integer(field: str, value: object) -> int:
    """``value`` if it is an int (not a bool); InvalidArgument naming ``field`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{field}: must be an integer")
    return value


def aware_utc(now: datetime) -> datetime:
    """``now`` in UTC; InvalidArgument unless it is a timezone-aware datetime."""
    if not isinstance(now, datetime):
        raise InvalidArgument("now: must be a datetime")
    if now.tzinfo is None or now.utcoffset() is None:
        raise InvalidArgument("now: must be timezone-aware")
    return now.astimezone(UTC)


@dataclass(frozen=True)
class Mechanism:
    """One differentially private use of a scope's data.

    ``dp_sgd``: ``steps`` Poisson-subsampled Gaussian steps (``sample_rate`` in (0, 1]).
    ``gaussian``: one release with Gaussian noise (``sample_rate`` 1, ``steps`` 1).
    ``noise_multiplier`` is the noise std over the L2 sensitivity (clipping norm).
    """

    kind: MechanismKind
    noise_multiplier: float
    sample_rate: float = 1.0
    steps: int = 1

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise InvalidArgument(f"mechanism.kind: must be one of {', '.join(_KINDS)}")
        noise = number("mechanism.noise_multiplier", self.noise_multiplier)
        if noise <= 0:
            raise InvalidArgument("mechanism.noise_multiplier: must be > 0")
        rate = number("mechanism.sample_rate", self.sample_rate)
        if not 0 < rate <= 1:
            raise InvalidArgument("mechanism.sample_rate: must be in (0, 1]")
        steps = integer("mechanism.steps", self.steps)
        if not 1 <= steps <= MAX_STEPS:
            raise InvalidArgument(f"mechanism.steps: must be in [1, {MAX_STEPS}]")
        if self.kind == "gaussian" and (rate != 1.0 or steps != 1):
            raise InvalidArgument(
                "mechanism.sample_rate/steps: a gaussian mechanism is one release"
                " (sample_rate 1, steps 1); use dp_sgd for subsampled steps"
            )
        object.__setattr__(self, "noise_multiplier", noise)
        object.__setattr__(self, "sample_rate", rate)

    @classmethod
    def dp_sgd(cls, *, noise_multiplier: float, sample_rate: float, steps: int) -> Mechanism:
        return cls("dp_sgd", noise_multiplier, sample_rate, steps)

    @classmethod
    def gaussian(cls, *, noise_multiplier: float) -> Mechanism:
        return cls("gaussian", noise_multiplier)


@dataclass(frozen=True)
class BudgetPolicy:
    """At most ``epsilon`` at ``delta`` for everything charged in any ``period_days`` window."""

    epsilon: float
    delta: float
    period_days: int = 30
    accountant: AccountantName = "rdp"

    def __post_init__(self) -> None:
        epsilon = number("policy.epsilon", self.epsilon)
        if epsilon <= 0:
            raise InvalidArgument("policy.epsilon: must be > 0")
        delta = number("policy.delta", self.delta)
        if not 0 < delta < 1:
            raise InvalidArgument("policy.delta: must be in (0, 1)")
        if integer("policy.period_days", self.period_days) < 1:
            raise InvalidArgument("policy.period_days: must be >= 1")
        if self.accountant not in _ACCOUNTANTS:
            raise InvalidArgument(f"policy.accountant: must be one of {', '.join(_ACCOUNTANTS)}")
        object.__setattr__(self, "epsilon", epsilon)
        object.__setattr__(self, "delta", delta)

    @property
    def window(self) -> timedelta:
        """The length of the sliding window (``period_days``)."""
        return timedelta(days=self.period_days)


@dataclass(frozen=True)
class Reservation:
    """A mechanism charged to a scope (as returned by :meth:`PrivacyLedger.reserve`)."""

    id: str
    job_id: str
    scope: str
    mechanism: Mechanism
    #: The scope's composed epsilon in the period right after this reservation.
    epsilon_after: float
    epsilon_budget: float
    delta: float
    #: The accountant that computed ``epsilon_after`` ("rdp" also when PRV fell back).
    accountant: AccountantName
    reserved_at: datetime
    #: The window it was checked against: ``[reserved_at - period_days, reserved_at]``.
    period_start: datetime
    #: When it stops counting: ``reserved_at + period_days``.
    period_end: datetime
    #: What its epsilon protects: "day" (a household-day) or "example" (one row).
    privacy_unit: str


@dataclass(frozen=True)
class LedgerEntry:
    """One row of a scope's history, for auditing."""

    id: str
    job_id: str
    scope: str
    mechanism: Mechanism
    status: Status
    #: Steps reported by commit (None unless committed).
    steps_done: int | None
    #: Steps that count against the budget now.
    steps_charged: int
    reserved_at: datetime
    #: When it was committed or released (None while reserved).
    settled_at: datetime | None
    period_start: datetime
    period_end: datetime
    epsilon_after: float
    epsilon_budget: float
    delta: float
    accountant: AccountantName
    privacy_unit: str


@dataclass(frozen=True)
class BudgetReport:
    scope: str
    epsilon_spent: float
    epsilon_budget: float
    delta: float
    epsilon_remaining: float
    #: The window reported: ``[period_end - period_days, period_end]`` (period_end: now).
    period_start: datetime
    period_end: datetime
    #: Mechanisms that currently count in the window (reserved or committed with steps).
    mechanisms: int
    accountant: AccountantName
    #: When the oldest counted mechanism leaves the window (None when nothing counts).
    frees_at: datetime | None = None
    #: The privacy units charged in the window, each with when its last charge leaves it
    #: (the ledger refuses a reservation in another unit until then), by unit name.
    units: tuple[tuple[str, datetime], ...] = ()
