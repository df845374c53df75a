"""Decision records for the audit tests: one factory, fixed instants."""

from __future__ import annotations

from roost.audit.v1 import audit_service_pb2 as pb
from roost.common.v1 import common_pb2
from services.audit import limits, salting

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


def _pad_to(message: pb.Decision | pb.DecisionInputs, size: int, extra: int = 0) -> None:
    """Adds an unknown bytes field (number 99) so that ``message`` serializes to
    ``size - extra`` bytes: what a caller may smuggle in beside the known fields."""
    base = message.SerializeToString(deterministic=True)
    target = size - extra
    for length in range(target - len(base), 0, -1):
        # Tag 99 (2 bytes) + varint length + payload.
        field = b"\x9a\x06" + _varint(length) + b"p" * length
        if len(base) + len(field) == target:
            message.MergeFromString(field)
            return
    raise ValueError(f"cannot pad to {target} bytes from {len(base)}")


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def largest_decision(i: int) -> pb.Decision:
    """A decision at its limits (services.audit.limits): the longest texts, the most
    values and attributions, and record and stored inputs of exactly the largest sizes."""
    d = decision(i, with_inputs=False)
    d.decision_id = f"{i:08d}" + "d" * (limits.MAX_DECISION_ID_CHARS - 8)
    d.hub_id = "h" * limits.MAX_TEXT_CHARS
    d.entity_id = "sensor." + "e" * (limits.MAX_ENTITY_ID_CHARS - 7)
    d.model.name = "n" * limits.MAX_MODEL_NAME_CHARS
    d.model.version = "v" * limits.MAX_MODEL_VERSION_CHARS
    d.model.sha256 = "s" * limits.MAX_MODEL_SHA256_CHARS
    d.output_label = "\u00e9" * limits.MAX_TEXT_CHARS  # 2 bytes each in UTF-8
    d.action = "a" * limits.MAX_ACTION_CHARS
    d.confidence = 1.0
    d.output_values[:] = [3.4e38] * limits.MAX_OUTPUT_VALUES
    d.explanation.extend(
        common_pb2.FeatureAttribution(feature=f"f{k}", attribution=-3.4e38)
        for k in range(limits.MAX_EXPLANATION)
    )
    d.explanation[0].feature = "f" * limits.MAX_TEXT_CHARS
    d.policy.policy_id = "p" * limits.MAX_TEXT_CHARS
    d.policy.reason = "r" * limits.MAX_TEXT_CHARS
    # The service adds the salted digest (64 hex characters, 66 bytes with its tag).
    _pad_to(d, limits.MAX_RECORD_BYTES, extra=66)
    inputs = pb.DecisionInputs(feature_names=["x" * 128] * 16)
    inputs.tensor.dtype = common_pb2.DATA_TYPE_FLOAT32
    inputs.tensor.float_values.extend([1.5] * 8000)
    # The service adds the salt (32 bytes, 34 with its tag).
    _pad_to(inputs, limits.MAX_INPUTS_BYTES, extra=salting.SALT_BYTES + 2)
    d.inputs.CopyFrom(inputs)
    return d
