"""The privacy ledger's audit trail: every reserve, commit and release, as an audit record.

The ledger (:mod:`.ledger`) appends one :class:`PrivacyRecord` to the audit log inside
the SQLite transaction of each change, before it commits: a change the audit log did not
acknowledge is rolled back (training fails closed), and the audit log always holds every
change the ledger holds. A record carries the charge's whole row after the change
(mechanism, parameters, epsilon, delta, scope, times; see ``ledger_schema.COLUMNS``):
names, numbers and times, never a household value.

As an audit ``Decision``: ``model`` is the fixed :data:`PRIVACY_MODEL`, ``action``
``privacy.reserve|commit|release``, ``entity_id`` ``roost.privacy.<scope>``,
``decision_id`` ``privacy.<action>.<reservation id>`` (a retried append is idempotent),
``output_label`` the row as a compact JSON array in ``ledger_schema.COLUMNS`` order
(Python floats round-trip exactly; :data:`PRIVACY_MODEL_SHA256` names the columns) and
``policy.reason`` the same in words. Both stay within the audit log's 512 characters
per text: the job id is at most 128 characters and the scope 64 (the worst case is
measured in tests/unit/personalization/test_ledger_trail.py). A record written before
the privacy unit was recorded (schema version 2: a JSON object without it) reads back
with ``ledger_schema.LEGACY_UNIT``, as the migrated ledger's rows do.

:func:`expected_rows` folds the records back into the rows the ledger must hold, and
:func:`discrepancies` compares them with the ledger's: a deleted, truncated or edited
ledger, or a header rolled back behind the trail, is named (ids and column names only).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from roost.audit.v1 import audit_service_pb2 as audit_pb
from roost.common.v1 import common_pb2
from services.kit.clock import from_us
from services.kit.errors import InvalidArgument
from services.personalization.ledger_schema import COLUMNS, LEGACY_UNIT, SCHEMA_VERSION
from services.personalization.privacy_unit import DESCRIPTIONS

Action = Literal["reserve", "commit", "release"]
Row = tuple[Any, ...]

#: The fixed model name of every privacy record (the audit log requires a model).
PRIVACY_MODEL: Final = "roost.privacy-ledger"
PRIVACY_MODEL_VERSION: Final = f"{SCHEMA_VERSION}.0.0"
#: Identifies the record format (the columns), as the audit log requires a sha256.
PRIVACY_MODEL_SHA256: Final = hashlib.sha256(
    ("roost privacy record:" + ",".join(COLUMNS)).encode()
).hexdigest()
POLICY_ID: Final = "personalization.privacy-ledger"
ACTIONS: Final[tuple[Action, ...]] = ("reserve", "commit", "release")
_STATUS: Final = {"reserve": "reserved", "commit": "committed", "release": "released"}
_SETTLEMENT: Final = ("status", "steps_done", "steps_charged", "settled_at_us")


@dataclass(frozen=True)
class PrivacyRecord:
    """One change of the ledger: the action and the charge's row after it."""

    action: Action
    row: Row

    def __post_init__(self) -> None:
        if self.action not in ACTIONS or len(self.row) != len(COLUMNS):
            raise InvalidArgument("privacy record: unknown action or row shape")

    @property
    def fields(self) -> dict[str, Any]:
        return dict(zip(COLUMNS, self.row, strict=True))

    @property
    def at_us(self) -> int:
        """The ledger time of the change (reservation or settlement)."""
        at = self.row[COLUMNS.index("settled_at_us")] if self.action != "reserve" else None
        return int(self.row[COLUMNS.index("reserved_at_us")] if at is None else at)

    def decision(self, hub_id: str) -> audit_pb.Decision:
        f = self.fields
        d = audit_pb.Decision(
            decision_id=f"privacy.{self.action}.{f['id']}",
            hub_id=hub_id,
            entity_id=f"roost.privacy.{f['scope']}",
            model=common_pb2.ModelRef(
                name=PRIVACY_MODEL, version=PRIVACY_MODEL_VERSION, sha256=PRIVACY_MODEL_SHA256
            ),
            output_label=json.dumps(list(self.row), separators=(",", ":")),
            output_values=[f["epsilon_after"], f["delta"]],
            action=f"privacy.{self.action}",
            actor=audit_pb.ACTOR_AUTOMATIC,
            policy=audit_pb.Policy(
                policy_id=POLICY_ID,
                verdict=audit_pb.POLICY_VERDICT_ALLOWED,
                reason=(
                    f"{f['kind']} noise {f['noise_multiplier']:.4g} q {f['sample_rate']:.4g}"
                    f" steps {f['steps_charged']}/{f['steps']} on scope {f['scope']}:"
                    f" epsilon {f['epsilon_after']:.4g} of {f['epsilon_budget']:.4g}"
                    f" at delta {f['delta']:.4g} per"
                    f" {DESCRIPTIONS.get(f['privacy_unit'], 'unit')} ({f['status']})"
                ),
            ),
        )
        d.decided_at.FromDatetime(from_us(self.at_us))
        return d

    @classmethod
    def from_decision(cls, d: audit_pb.Decision) -> PrivacyRecord:
        """The record of an audit entry written by :meth:`decision`; InvalidArgument if
        the entry is not one (a malformed entry is never silently skipped)."""
        action = d.action.removeprefix("privacy.")
        try:
            row = _row(json.loads(d.output_label))
        except (ValueError, TypeError, KeyError):
            raise InvalidArgument(
                f"audit entry {d.decision_id[:80]!r}: not a privacy record"
            ) from None
        if action not in ACTIONS or row[COLUMNS.index("status")] != _STATUS.get(action):
            raise InvalidArgument(f"audit entry {d.decision_id[:80]!r}: not a privacy record")
        return cls(action, row)


def _row(label: object) -> Row:
    """The row of an ``output_label``: an array of COLUMNS, or a version-2 object (no
    privacy unit). ValueError/KeyError if it is neither."""
    if isinstance(label, list):
        if len(label) != len(COLUMNS):
            raise ValueError("a privacy record has one value per column")
        return tuple(label)
    if not isinstance(label, dict) or "privacy_unit" in label:
        raise ValueError("not a privacy record")
    return (*(label[c] for c in COLUMNS[:-1]), LEGACY_UNIT)


def replay(row: Row) -> list[PrivacyRecord]:
    """The records that would have led to ``row``: for a ledger made before its changes
    were recorded (schema version 1), appended once (:meth:`PrivacyLedger.record_untrailed`)."""
    f = dict(zip(COLUMNS, row, strict=True))
    reserved = {**f, "status": "reserved", "steps_done": None, "settled_at_us": None}
    reserved["steps_charged"] = f["steps"]
    out = [PrivacyRecord("reserve", tuple(reserved[c] for c in COLUMNS))]
    if f["status"] == "released" and f["steps_done"] == 0:
        committed = {**f, "status": "committed", "steps_charged": 0}
        out.append(PrivacyRecord("commit", tuple(committed[c] for c in COLUMNS)))
    if f["status"] != "reserved":
        out.append(PrivacyRecord("commit" if f["status"] == "committed" else "release", row))
    return out


def expected_rows(records: Iterable[PrivacyRecord]) -> tuple[dict[str, Row], int, list[str]]:
    """The rows the ledger must hold after ``records`` (in audit-log order), by id, the
    latest ledger time among them (0 without records), and the records that break the
    ledger's rules (a settlement without its reservation, a second settlement, a refund
    of steps that ran, changed parameters): those are left out and named."""
    rows: dict[str, Row] = {}
    latest = 0
    invalid: list[str] = []
    for r in records:
        rid = str(r.row[0])
        if not _follows(rows.get(rid), r):
            invalid.append(f"privacy.{r.action}.{rid}")
            continue
        rows[rid] = r.row
        latest = max(latest, r.at_us)
    return rows, latest, invalid


_FIXED: Final = tuple(i for i, c in enumerate(COLUMNS) if c not in _SETTLEMENT)


def _follows(before: Row | None, r: PrivacyRecord) -> bool:
    """Whether ``r`` is a change the ledger could have made to ``before``."""
    f = r.fields
    if r.action == "reserve":
        return (
            before is None
            and f["steps_done"] is None
            and f["steps_charged"] == f["steps"]
            and f["privacy_unit"] in DESCRIPTIONS
        )
    if before is None or any(before[i] != r.row[i] for i in _FIXED):
        return False
    status, done = before[COLUMNS.index("status")], before[COLUMNS.index("steps_done")]
    if r.action == "commit":
        return bool(status == "reserved" and f["steps_done"] == f["steps_charged"])
    return bool(
        (status == "reserved" or (status == "committed" and done == 0))
        and f["steps_charged"] == 0
        and f["steps_done"] == done
    )


def discrepancies(
    expected: Mapping[str, Row], latest_us: int, actual: Sequence[Row], high_water_us: int
) -> list[str]:
    """What differs between the ledger (``actual`` rows, its high-water mark) and the audit
    trail (``expected`` rows, its latest time); empty when they agree."""
    problems: list[str] = []
    have = {str(r[0]): tuple(r) for r in actual}
    missing = sorted(set(expected) - set(have))
    extra = sorted(set(have) - set(expected))
    if missing:
        problems.append(
            f"{len(missing)} mechanism(s) recorded in the audit log are missing from the"
            f" ledger (e.g. {missing[0]}): it was deleted, truncated or replaced"
        )
    if extra:
        problems.append(
            f"{len(extra)} mechanism(s) in the ledger were never recorded in the audit log"
            f" (e.g. {extra[0]})"
        )
    for rid in sorted(set(expected) & set(have)):
        changed = [c for c, a, b in zip(COLUMNS, expected[rid], have[rid], strict=True) if a != b]
        if changed:
            problems.append(f"mechanism {rid}: {', '.join(changed)} differ from the audit log")
    if high_water_us < latest_us:
        problems.append(
            f"the ledger's clock ({from_us(high_water_us).isoformat()}) is behind the audit"
            f" log's latest privacy record ({from_us(latest_us).isoformat()}): its header"
            " was rolled back"
        )
    return problems
