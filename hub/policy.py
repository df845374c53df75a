"""The action policy: which Home Assistant action, if any, a decision carries.

A homeowner allow-lists actions per (model, area, label). A rule fires on a *change*
of that label (the first decision counts as a change), so a light is not switched
off again with every reading. What "the last label" is matters: it is the label of
the last decision the audit log *acknowledged*, in reading order. So evaluating is
pure (:meth:`ActionPolicy.evaluate` against a remembered label), and the memory
changes only through :meth:`ActionPolicy.commit`, which the pipeline calls once a
decision's ``AppendResult`` came back, in reading order. :class:`PolicyRound`
evaluates one batch in reading order on top of that memory. The labels of entities with
rules are kept across restarts (:class:`~hub.action_memory.ActionMemory`), so a restart
is not a change: the first decision after it does not repeat the last action.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client import Counter

from hub.action_memory import ActionMemory
from roost.audit.v1 import audit_service_pb2 as audit_pb

HA_ACTIONS = Counter(
    "roost_hub_ha_actions_total",
    "Allow-list actions by outcome: blocked (recorded, never called), called, unneeded "
    "(the entity already in that state: not called), failed (after every attempt), "
    "retried (one failed attempt).",
    ["outcome"],
)

REPORT_ONLY = audit_pb.Policy(
    policy_id="report-only",
    verdict=audit_pb.POLICY_VERDICT_NOT_APPLICABLE,
    reason="Roost reports this prediction; no action is configured for this entity.",
)
LATE = audit_pb.Policy(
    policy_id="late",
    verdict=audit_pb.POLICY_VERDICT_NOT_APPLICABLE,
    reason="Decided after a newer reading of this entity (a backlog drained): no action.",
)
# Home Assistant domains Roost never operates on its own, whatever the allow-list says.
NEVER_AUTOMATIC = frozenset({"lock", "alarm_control_panel", "siren", "camera", "valve"})
_RULE = re.compile(
    r"^(?P<suggest>suggest\s+)?(?P<model>[a-z0-9_]{1,64})\.(?P<area>[a-z0-9_]{1,64})"
    r":(?P<label>[A-Za-z0-9_]{1,64})=(?P<domain>[a-z0-9_]{1,64})\.(?P<service>[a-z0-9_]{1,64})"
    r":(?P<target>[a-z0-9_]{1,64}\.[a-z0-9_]{1,255})$"
)


@dataclass(frozen=True)
class ActionRule:
    """One allow-list entry: when ``model`` decides ``label`` for ``area``, call
    ``domain.service`` on ``target`` in Home Assistant (``allowed``), or only record
    that it would have (a ``suggest`` entry, verdict BLOCKED)."""

    model: str
    area: str
    label: str
    domain: str
    service: str
    target: str
    allowed: bool = True

    @property
    def action(self) -> str:
        return f"{self.domain}.{self.service}"

    @property
    def policy_id(self) -> str:
        return f"ha-allow-list:{self.model}.{self.area}:{self.label}"


def parse_action_rules(entries: Sequence[str]) -> list[ActionRule]:
    """``"occupancy.kitchen:vacant=light.turn_off:light.kitchen"`` (allowed) or the same
    prefixed with ``suggest `` (recorded as BLOCKED, never called). ValueError if malformed."""
    rules: list[ActionRule] = []
    for entry in entries:
        m = _RULE.match(entry.strip())
        if m is None:
            raise ValueError(
                f"ha_actions: '{entry}' must look like "
                "'occupancy.kitchen:vacant=light.turn_off:light.kitchen_light' "
                "(optionally prefixed with 'suggest ')"
            )
        rules.append(
            ActionRule(
                model=m["model"],
                area=m["area"],
                label=m["label"],
                domain=m["domain"],
                service=m["service"],
                target=m["target"],
                allowed=m["suggest"] is None,
            )
        )
    return rules


@dataclass(frozen=True)
class Outcome:
    """The policy and action recorded with one decision.

    ``rule`` is the allow-listed action to run once the decision is acknowledged (None
    if nothing runs); ``label`` is the effective label the policy remembers then.
    """

    model: str
    area: str
    label: str
    policy: audit_pb.Policy
    action: str
    rule: ActionRule | None = None

    @property
    def blocked(self) -> bool:
        return self.policy.verdict == audit_pb.POLICY_VERDICT_BLOCKED


class ActionPolicy:
    """Turns a prediction into the policy and action recorded with its decision.

    The occupancy label is re-derived from P(occupied) and the configurable threshold;
    other models use the model's label. A rule fires when that label differs from the
    last *acknowledged* one for its (model, area).
    """

    def __init__(
        self,
        rules: Sequence[ActionRule] = (),
        occupancy_threshold: float = 0.5,
        memory: ActionMemory | None = None,
    ) -> None:
        self.occupancy_threshold = occupancy_threshold
        self._rules = {(r.model, r.area, r.label): r for r in rules}
        self._ruled = {(r.model, r.area) for r in rules}
        self.memory = memory or ActionMemory()
        self._last: dict[tuple[str, str], str] = {}
        for model, area in self._ruled:
            remembered = self.memory.label(model, area)
            if remembered is not None:
                self._last[(model, area)] = remembered

    @property
    def rules(self) -> list[ActionRule]:
        return list(self._rules.values())

    def effective_label(self, model: str, label: str, values: Sequence[float]) -> str:
        if model == "occupancy" and len(values) == 2:  # (vacant, occupied)
            return "occupied" if values[1] >= self.occupancy_threshold else "vacant"
        return label

    def remembers(self, model: str, area: str) -> bool:
        """True if an outcome for (model, area) depends on its last label (it has rules)."""
        return (model, area) in self._ruled

    def last_label(self, model: str, area: str) -> str | None:
        """The effective label of the last acknowledged decision for (model, area)."""
        return self._last.get((model, area))

    def evaluate(
        self, model: str, area: str, label: str, values: Sequence[float], *, previous: str | None
    ) -> Outcome:
        """The outcome of a prediction, given the label remembered before it. Pure."""
        effective = self.effective_label(model, label, values)
        rule = self._rules.get((model, area, effective))
        if rule is None:
            return Outcome(model, area, effective, REPORT_ONLY, "publish")
        if previous == effective:
            unchanged = audit_pb.Policy(
                policy_id=rule.policy_id,
                verdict=audit_pb.POLICY_VERDICT_NOT_APPLICABLE,
                reason=f"unchanged since the last decision; {rule.action} is not repeated",
            )
            return Outcome(model, area, effective, unchanged, "publish")
        if not rule.allowed or rule.domain in NEVER_AUTOMATIC:
            why = (
                f"{rule.domain} is never operated automatically"
                if rule.domain in NEVER_AUTOMATIC
                else "suggested only: the homeowner has not allowed this action"
            )
            blocked = audit_pb.Policy(
                policy_id=rule.policy_id,
                verdict=audit_pb.POLICY_VERDICT_BLOCKED,
                reason=f"{rule.action} on {rule.target} blocked: {why}",
            )
            return Outcome(model, area, effective, blocked, rule.action)
        allowed = audit_pb.Policy(
            policy_id=rule.policy_id,
            verdict=audit_pb.POLICY_VERDICT_ALLOWED,
            reason=f"allow-listed: {rule.action} on {rule.target} when {model} in "
            f"{area} is {effective}",
        )
        return Outcome(model, area, effective, allowed, rule.action, rule)

    def commit(self, outcome: Outcome) -> None:
        """The audit log acknowledged the decision carrying ``outcome``: remember its label."""
        self._last[(outcome.model, outcome.area)] = outcome.label
        if (outcome.model, outcome.area) in self._ruled:
            self.memory.remember_label(outcome.model, outcome.area, outcome.label)
        if outcome.blocked:
            HA_ACTIONS.labels("blocked").inc()

    def late(self, model: str, area: str, label: str, values: Sequence[float]) -> Outcome:
        """The outcome of a late decision: reported, never acted on, never remembered."""
        return Outcome(model, area, self.effective_label(model, label, values), LATE, "publish")

    def round(self) -> PolicyRound:
        return PolicyRound(self)


class PolicyRound:
    """Evaluates one batch in reading order over the acknowledged memory.

    A later reading of the batch sees an earlier one's label (the batch is recorded
    together, so they are acknowledged together); the policy itself is unchanged until
    :meth:`ActionPolicy.commit`.
    """

    def __init__(self, policy: ActionPolicy) -> None:
        self._policy = policy
        self._labels: dict[tuple[str, str], str | None] = {}

    def evaluate(self, model: str, area: str, label: str, values: Sequence[float]) -> Outcome:
        key = (model, area)
        previous = (
            self._labels[key] if key in self._labels else self._policy.last_label(model, area)
        )
        outcome = self._policy.evaluate(model, area, label, values, previous=previous)
        self._labels[key] = outcome.label
        return outcome
