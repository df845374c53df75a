"""Before every training run: the ledger's clock first, then retention with that clock.

The budget holds for an example's whole life only if no example outlives the budget's
window (``retention_days <= period_days``, checked by the configuration) and retention
is enforced with the SAME clock as the ledger, right before the run reserves its budget:
a clock that went back is refused by the ledger (nothing is pruned or charged), and a
clock that jumped forward prunes the data that the runs now outside the window read.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from services.personalization.ledger import PrivacyLedger
from services.personalization.store import ExampleStore


def enforce_retention(
    ledger: PrivacyLedger, store: ExampleStore, retention: timedelta, now: datetime | None = None
) -> datetime:
    """Deletes the examples past ``retention`` at the ledger's time for ``now`` and
    returns that time, the one the run must reserve at (FailedPrecondition, nothing
    deleted, if the clock went back)."""
    at = ledger.check_time(now)
    store.prune(at - retention)
    return at
