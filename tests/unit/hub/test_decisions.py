"""The allow-list of Home Assistant actions and the action policy."""

from __future__ import annotations

import pytest

from hub.decisions import ActionPolicy, parse_action_rules
from roost.audit.v1 import audit_service_pb2 as audit_pb


def test_action_rules_parse_and_policy() -> None:
    rules = parse_action_rules(
        [
            "occupancy.kitchen:vacant=light.turn_off:light.kitchen",
            "suggest occupancy.hall:vacant=light.turn_off:light.hall",
            "occupancy.door:vacant=lock.lock:lock.front",
        ]
    )
    assert [r.allowed for r in rules] == [True, False, True]
    with pytest.raises(ValueError, match="must look like"):
        parse_action_rules(["kitchen -> light off"])
    policy = ActionPolicy(rules, occupancy_threshold=0.5)
    p, action, rule = policy.evaluate("occupancy", "kitchen", "vacant", [0.9, 0.1])
    assert (p.verdict, action, rule) == (
        audit_pb.POLICY_VERDICT_ALLOWED,
        "light.turn_off",
        rules[0],
    )
    # Unchanged label: not repeated.
    p, action, rule = policy.evaluate("occupancy", "kitchen", "vacant", [0.8, 0.2])
    assert (p.verdict, action, rule) == (audit_pb.POLICY_VERDICT_NOT_APPLICABLE, "publish", None)
    p, action, rule = policy.evaluate("occupancy", "hall", "vacant", [0.9, 0.1])
    assert (p.verdict, action, rule) == (audit_pb.POLICY_VERDICT_BLOCKED, "light.turn_off", None)
    p, _, rule = policy.evaluate("occupancy", "door", "vacant", [0.9, 0.1])
    assert (p.verdict, rule) == (audit_pb.POLICY_VERDICT_BLOCKED, None)  # locks: never
    # The threshold decides the occupancy label the policy acts on.
    policy.occupancy_threshold = 0.05
    p, _, rule = policy.evaluate("occupancy", "kitchen", "vacant", [0.9, 0.1])
    assert rule is None  # 0.1 >= 0.05: occupied, no rule for it
    assert p.verdict == audit_pb.POLICY_VERDICT_NOT_APPLICABLE
