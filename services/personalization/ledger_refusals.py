"""Why the privacy ledger refuses a reservation, in words an operator can act on.

Two refusals, both FAILED_PRECONDITION with nothing recorded (:meth:`PrivacyLedger.reserve`):

* :func:`over_budget`: the window's composed epsilon would exceed the budget.
* :func:`unit_mismatch`: the window already holds charges in another privacy unit. An
  epsilon per example says nothing about a household-day (a day holds hundreds of
  correlated rows), so charges in different units are never composed into one number:
  a reservation in a unit other than every unit charged in the current sliding window
  is refused until the last of those charges leaves the window.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from services.kit.errors import FailedPrecondition
from services.personalization.ledger_records import BudgetPolicy
from services.personalization.privacy_unit import DESCRIPTIONS

logger = logging.getLogger(__name__)


def over_budget(
    scope: str,
    policy: BudgetPolicy,
    epsilons: tuple[float, float],
    used: str,
    oldest: datetime | None,
) -> FailedPrecondition:
    """The refusal of a reservation that would take the window's epsilon from
    ``epsilons[0]`` to ``epsilons[1]``, over the budget."""
    before, after = epsilons
    logger.info(
        "privacy budget refused: scope=%s epsilon %.4f -> %.4f > %.4g",
        scope,
        before,
        after,
        policy.epsilon,
    )
    frees = (
        ""
        if oldest is None
        else f"; the oldest counted run leaves the window at {(oldest + policy.window).isoformat()}"
    )
    return FailedPrecondition(
        f"privacy budget exceeded for scope '{scope}': epsilon already spent {before:.4f}"
        f" in the last {policy.period_days} days; this run would add {after - before:.4f}"
        f" (cumulative {after:.4f}) over the budget of epsilon {policy.epsilon:g} at delta"
        f" {policy.delta:g} ({used} accountant){frees}. Lower steps or sample_rate, or raise"
        " noise_multiplier."
    )


def unit_mismatch(
    scope: str,
    policy: BudgetPolicy,
    unit: str,
    charged: Sequence[tuple[str, datetime]],
) -> FailedPrecondition | None:
    """The refusal of a reservation in ``unit`` when the window holds charges in other
    units (``charged``: each unit in the window with its latest reservation time), or
    None when every charge in the window is in ``unit``."""
    others = sorted((u, last) for u, last in charged if u != unit)
    if not others:
        return None
    clear = max(last for _, last in others) + policy.window
    named = " and ".join(f"'{u}' ({DESCRIPTIONS.get(u, u)})" for u, _ in others)
    logger.info(
        "privacy budget refused: scope=%s unit %s while the window holds %s",
        scope,
        unit,
        ",".join(u for u, _ in others),
    )
    return FailedPrecondition(
        f"privacy unit changed for scope '{scope}': this run would charge epsilon per"
        f" '{unit}' ({DESCRIPTIONS.get(unit, unit)}) but the last {policy.period_days} days"
        f" already hold charges per {named}, and epsilons in different units cannot be"
        f" added up. Training in '{unit}' is refused until {clear.isoformat()}, when those"
        f" charges leave the window; or set [personalization] privacy_unit back to"
        f" '{others[-1][0]}'."
    )
