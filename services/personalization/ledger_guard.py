"""The privacy ledger checked against its audit trail, and rebuilt from it.

The audit log is the ledger's witness: every reserve, commit and release was appended
to it before the ledger committed the change (:mod:`.ledger_trail`). At start and before
every training run, :meth:`LedgerGuard.check` folds the trail back into the rows the
ledger must hold and compares them with the file: a deleted, truncated, replaced or
edited ledger, a rolled-back header or an edited privacy curve is FAILED_PRECONDITION
naming what differs, and training is refused until ``roost personalize ledger rebuild``
(:meth:`LedgerGuard.rebuild`) has rebuilt the file from the trail.

**The audit log unavailable fails closed.** The trail cannot be read, so the check
raises ``Unavailable`` and no run starts; a ledger change cannot be recorded, so it is
rolled back (a reservation is refused; a commit or release leaves the run charged at its
full reserved steps, the conservative side).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from services.kit.errors import FailedPrecondition
from services.personalization.ledger import PrivacyLedger
from services.personalization.ledger_trail import PrivacyRecord, discrepancies, expected_rows
from services.personalization.metrics import LEDGER_CONSISTENT

logger = logging.getLogger(__name__)

RecordSource = Callable[[], Awaitable[list[PrivacyRecord]]]
"""Every privacy record in the audit log, in log order (Unavailable if it cannot be read)."""

REBUILD_ADVICE = "rebuild it from the audit log with `roost personalize ledger rebuild`"


class LedgerGuard:
    """Cross-checks ``ledger`` against the privacy records of the audit log."""

    def __init__(self, ledger: PrivacyLedger, records: RecordSource) -> None:
        self._ledger = ledger
        self._records = records

    async def problems(self) -> list[str]:
        """What differs between the ledger and the audit trail (empty when they agree)."""
        expected, latest, invalid = expected_rows(await self._records())
        if invalid:
            return [
                f"{len(invalid)} privacy record(s) in the audit log break the ledger's rules"
                f" (e.g. {invalid[0]}): another writer appended them; the ledger cannot be"
                " checked or rebuilt until an operator looks at the audit log"
            ]
        try:
            rows, high_water, altered = await asyncio.to_thread(self._ledger.rows)
        except FailedPrecondition as e:
            return [str(e)]
        found = discrepancies(expected, latest, rows, high_water)
        found += [f"mechanism {rid}: its stored privacy curve was edited" for rid in altered]
        return found

    async def record_untrailed(self) -> None:
        """Puts a version-1 ledger's charges in the audit log (once, at start)."""
        n = await asyncio.to_thread(self._ledger.record_untrailed)
        if n:
            logger.warning("privacy ledger: %d earlier mechanisms recorded in the audit log", n)

    async def check(self) -> None:
        """FailedPrecondition (training refused) unless the ledger matches the trail."""
        found = await self.problems()
        LEDGER_CONSISTENT.set(0 if found else 1)
        if found:
            logger.error("privacy ledger does not match the audit log: %s", "; ".join(found))
            shown = "; ".join(found[:3]) + ("; ..." if len(found) > 3 else "")
            raise FailedPrecondition(
                f"the privacy ledger does not match the audit log ({shown}): training is"
                f" refused until you {REBUILD_ADVICE}"
            )

    async def rebuild(self) -> tuple[int, int]:
        """Rebuilds the ledger from the trail, checks it, and returns (records, mechanisms)."""
        records = await self._records()
        expected, latest, invalid = expected_rows(records)
        if invalid:
            raise FailedPrecondition(
                f"the audit log holds {len(invalid)} privacy record(s) that break the"
                f" ledger's rules (e.g. {invalid[0]}): not rebuilt from it"
            )
        kept = await asyncio.to_thread(self._ledger.rebuild, list(expected.values()), latest)
        logger.warning("the replaced privacy ledger is kept as %s", kept.name)
        await self.check()
        return len(records), len(expected)
