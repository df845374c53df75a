"""The action policy: allow-list rules, verdicts, and a memory of acknowledged labels."""

from __future__ import annotations

from pathlib import Path

import pytest

from hub.action_memory import MEMORY_FILE, ActionMemory
from hub.policy import HA_ACTIONS, REPORT_ONLY, ActionPolicy, Outcome, parse_action_rules
from roost.audit.v1 import audit_service_pb2 as audit_pb

RULES = [
    "occupancy.kitchen:vacant=light.turn_off:light.kitchen",
    "suggest occupancy.hall:vacant=light.turn_off:light.hall",
    "occupancy.door:vacant=lock.lock:lock.front",
]


def decide(policy: ActionPolicy, area: str, values: list[float]) -> Outcome:
    """Evaluate against the memory, then acknowledge (commit) at once."""
    outcome = policy.evaluate(
        "occupancy", area, "vacant", values, previous=policy.last_label("occupancy", area)
    )
    policy.commit(outcome)
    return outcome


def test_action_rules_parse_and_policy() -> None:
    rules = parse_action_rules(RULES)
    assert [r.allowed for r in rules] == [True, False, True]
    with pytest.raises(ValueError, match="must look like"):
        parse_action_rules(["kitchen -> light off"])
    policy = ActionPolicy(rules, occupancy_threshold=0.5)
    o = decide(policy, "kitchen", [0.9, 0.1])
    assert (o.policy.verdict, o.action, o.rule) == (
        audit_pb.POLICY_VERDICT_ALLOWED,
        "light.turn_off",
        rules[0],
    )
    # Unchanged label: not repeated.
    o = decide(policy, "kitchen", [0.8, 0.2])
    assert (o.policy.verdict, o.action, o.rule) == (
        audit_pb.POLICY_VERDICT_NOT_APPLICABLE,
        "publish",
        None,
    )
    o = decide(policy, "hall", [0.9, 0.1])
    assert (o.policy.verdict, o.action, o.rule) == (
        audit_pb.POLICY_VERDICT_BLOCKED,
        "light.turn_off",
        None,
    )
    o = decide(policy, "door", [0.9, 0.1])
    assert (o.policy.verdict, o.rule) == (audit_pb.POLICY_VERDICT_BLOCKED, None)  # locks: never
    # The threshold decides the occupancy label the policy acts on.
    policy.occupancy_threshold = 0.05
    o = decide(policy, "kitchen", [0.9, 0.1])
    assert o.rule is None  # 0.1 >= 0.05: occupied, no rule for it
    assert o.policy.verdict == audit_pb.POLICY_VERDICT_NOT_APPLICABLE


def test_evaluate_leaves_the_memory_alone_until_commit() -> None:
    policy = ActionPolicy(parse_action_rules(RULES[:1]))
    first = policy.evaluate("occupancy", "kitchen", "vacant", [0.9, 0.1], previous=None)
    again = policy.evaluate("occupancy", "kitchen", "vacant", [0.9, 0.1], previous=None)
    assert first == again  # pure: the second one fires as well
    assert first.rule is not None
    assert policy.last_label("occupancy", "kitchen") is None
    policy.commit(first)
    assert policy.last_label("occupancy", "kitchen") == "vacant"


def test_blocked_actions_are_counted_once_recorded() -> None:
    policy = ActionPolicy(parse_action_rules(RULES))
    blocked = HA_ACTIONS.labels("blocked")
    before = blocked._value.get()
    outcome = policy.evaluate("occupancy", "hall", "vacant", [0.9, 0.1], previous=None)
    assert outcome.blocked
    assert blocked._value.get() == before  # not recorded yet
    policy.commit(outcome)
    assert blocked._value.get() == before + 1


def test_a_round_sees_its_earlier_labels_but_does_not_commit() -> None:
    policy = ActionPolicy(parse_action_rules(RULES[:1]))
    assert policy.remembers("occupancy", "kitchen")
    assert not policy.remembers("occupancy", "office")
    policy.commit(policy.evaluate("occupancy", "kitchen", "occupied", [0.2, 0.8], previous=None))
    batch = policy.round()
    verdicts = [
        batch.evaluate("occupancy", "kitchen", label, values).policy.verdict
        for label, values in [("vacant", [0.9, 0.1]), ("vacant", [0.9, 0.1])]
    ]
    assert verdicts == [audit_pb.POLICY_VERDICT_ALLOWED, audit_pb.POLICY_VERDICT_NOT_APPLICABLE]
    assert policy.last_label("occupancy", "kitchen") == "occupied"  # nothing acknowledged


def test_other_models_use_their_own_label() -> None:
    policy = ActionPolicy(parse_action_rules(["routine.home:away=light.turn_off:light.all"]))
    o = policy.evaluate("routine", "home", "away", [0.7, 0.2, 0.1], previous="idle")
    assert (o.label, o.action) == ("away", "light.turn_off")
    o = policy.evaluate("routine", "home", "idle", [0.1, 0.2, 0.7], previous="away")
    assert (o.label, o.policy, o.rule) == ("idle", REPORT_ONLY, None)


def test_a_restart_is_not_a_change(tmp_path: Path) -> None:
    """The acknowledged label of a ruled entity survives a restart: the first decision of
    a new policy over the same file does not fire again; a change after it does."""
    path = tmp_path / MEMORY_FILE
    rules = parse_action_rules(RULES[:1])
    first = ActionPolicy(rules, memory=ActionMemory.load(path))
    assert decide(first, "kitchen", [0.9, 0.1]).rule == rules[0]
    decide(first, "office", [0.9, 0.1])  # no rule: not kept
    restarted = ActionPolicy(rules, memory=ActionMemory.load(path))
    assert restarted.last_label("occupancy", "kitchen") == "vacant"
    assert restarted.last_label("occupancy", "office") is None
    o = decide(restarted, "kitchen", [0.8, 0.2])
    assert (o.rule, o.policy.verdict) == (None, audit_pb.POLICY_VERDICT_NOT_APPLICABLE)
    assert "not repeated" in o.policy.reason
    decide(restarted, "kitchen", [0.1, 0.9])  # occupied is remembered too ...
    again = ActionPolicy(rules, memory=ActionMemory.load(path))
    assert decide(again, "kitchen", [0.9, 0.1]).rule == rules[0]  # ... so vacant fires


def test_a_damaged_memory_is_set_aside(tmp_path: Path) -> None:
    path = tmp_path / MEMORY_FILE
    path.write_text('{"labels": ["not", "a", "map"]')
    policy = ActionPolicy(parse_action_rules(RULES[:1]), memory=ActionMemory.load(path))
    assert policy.last_label("occupancy", "kitchen") is None
    assert (tmp_path / f"{MEMORY_FILE}.bad").is_file()
    decide(policy, "kitchen", [0.9, 0.1])
    assert ActionMemory.load(path).label("occupancy", "kitchen") == "vacant"
