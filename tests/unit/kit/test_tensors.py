"""Input validation names the field and never echoes a value."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.manifest import FeatureInfo, InputSchema
from roost.common.v1 import common_pb2
from services.kit.errors import InvalidArgument
from services.kit.tensors import tensor_to_array

SCHEMA = InputSchema(
    name="features",
    dtype="float32",
    shape=(3,),
    features=(FeatureInfo("temperature"), FeatureInfo("light"), FeatureInfo("co2")),
)


def t(
    values: list[float], dtype: int = common_pb2.DATA_TYPE_FLOAT32, shape=()
) -> common_pb2.Tensor:  # type: ignore[no-untyped-def]
    return common_pb2.Tensor(dtype=dtype, shape=list(shape), float_values=values)


def err(tensor: common_pb2.Tensor) -> str:
    with pytest.raises(InvalidArgument) as e:
        tensor_to_array(tensor, SCHEMA, "inputs[2]")
    return str(e.value)


def test_valid() -> None:
    arr = tensor_to_array(t([1.0, 2.0, 3.0]), SCHEMA, "input")
    assert arr.dtype == np.float32
    assert arr.shape == (3,)


def test_wrong_length_names_field_and_features() -> None:
    msg = err(t([1.0, 2.0]))
    assert msg.startswith("inputs[2].float_values: 2 values, the model takes 3")
    assert "temperature, light, co2" in msg


def test_wrong_shape() -> None:
    assert "inputs[2].shape: [1, 3] does not match the model's [3]" in err(
        t([1, 2, 3], shape=(1, 3))
    )


def test_missing_and_wrong_dtype() -> None:
    assert "inputs[2].dtype: required" in err(t([1, 2, 3], dtype=common_pb2.DATA_TYPE_UNSPECIFIED))
    msg = err(common_pb2.Tensor(dtype=common_pb2.DATA_TYPE_FLOAT64, double_values=[1, 2, 3]))
    assert "inputs[2].dtype: DATA_TYPE_FLOAT64 does not match the model's DATA_TYPE_FLOAT32" in msg


def test_values_in_the_wrong_field() -> None:
    tensor = common_pb2.Tensor(
        dtype=common_pb2.DATA_TYPE_FLOAT32, float_values=[1, 2, 3], int64_values=[1]
    )
    assert "inputs[2].int64_values: must be empty" in err(tensor)


@pytest.mark.parametrize(
    ("bad", "word"), [(math.nan, "NaN"), (math.inf, "infinity"), (-math.inf, "infinity")]
)
def test_non_finite_names_index_and_feature(bad: float, word: str) -> None:
    msg = err(t([1.0, 2.0, bad]))
    assert msg == f"inputs[2].float_values[2] (co2): {word} is not allowed"


def test_message_does_not_echo_values() -> None:
    assert "12345" not in err(t([12345.0, 2.0]))
