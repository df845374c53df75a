"""Decision records for the audit tests: one factory, fixed instants."""

from __future__ import annotations

from roost.audit.v1 import audit_service_pb2 as pb
from roost.common.v1 import common_pb2

T0_US = 1_780_000_000_000_000  # a fixed instant in 2026


def decision(
    i: int,
    *,
    entity_id: str = "binary_sensor.kitchen_occupancy",
    model: tuple[str, str] = ("occupancy", "1.0.0"),
    action: str = "publish",
    t_us: int | None = None,
    with_inputs: bool = True,
) -> pb.Decision:
    d = pb.Decision(
        decision_id=f"00000000-0000-4000-8000-{i:012d}",
        hub_id="hub-test",
        entity_id=entity_id,
        model=common_pb2.ModelRef(name=model[0], version=model[1], sha256="ab" * 32),
        output_values=[0.1, 0.9],
        output_label="occupied",
        confidence=0.9,
        action=action,
        actor=pb.ACTOR_AUTOMATIC,
        policy=pb.Policy(policy_id="occupancy.threshold", verdict=pb.POLICY_VERDICT_ALLOWED),
    )
    d.decided_at.FromMicroseconds(T0_US + i * 1_000_000 if t_us is None else t_us)
    if with_inputs:
        d.inputs.feature_names.extend(["co2_ppm", "motion"])
        d.inputs.tensor.CopyFrom(
            common_pb2.Tensor(
                dtype=common_pb2.DATA_TYPE_FLOAT32, shape=[2], float_values=[612.0, 1.0]
            )
        )
    return d
