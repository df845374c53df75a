"""Input validation names the field and never echoes a value."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from models.manifest import FeatureInfo, InputSchema
from roost.common.v1 import common_pb2
from services.kit.errors import InvalidArgument
from services.kit.tensors import tensor_to_array
from tests.support.properties import PROPERTIES

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


SCHEMA64 = InputSchema(
    name="features",
    dtype="float64",
    shape=(3,),
    features=(FeatureInfo("temperature"), FeatureInfo("light"), FeatureInfo("co2")),
)


@pytest.mark.parametrize("big", [1e39, 1e308, -3.5e38])
def test_float64_values_beyond_float32_are_refused(big: float) -> None:
    tensor = common_pb2.Tensor(dtype=common_pb2.DATA_TYPE_FLOAT64, double_values=[1.0, big, 3.0])
    with pytest.raises(InvalidArgument) as e:
        tensor_to_array(tensor, SCHEMA64, "inputs[4]")
    assert str(e.value) == (
        "inputs[4].double_values[1] (light): a value beyond float32's range is not allowed"
    )
    assert "e+" not in str(e.value)
    assert "39" not in str(e.value)


def test_1e39_in_a_float32_tensor_is_infinity_named_by_field() -> None:
    # float_values carries float32: 1e39 arrives as infinity, refused by field.
    assert (
        err(t([1e39, 2.0, 3.0]))
        == "inputs[2].float_values[0] (temperature): infinity is not allowed"
    )


def test_a_long_shape_is_summarized_not_echoed() -> None:
    msg = err(t([1.0, 2.0, 3.0], shape=[1] * 100_000))
    assert msg == "inputs[2].shape: 100000 dimensions does not match the model's [3]"


# --------------------------------------------------------------- properties

SCHEMAS = [
    SCHEMA,
    SCHEMA64,
    InputSchema(
        name="counts", dtype="int64", shape=(2,), features=(FeatureInfo("a"), FeatureInfo("b"))
    ),
]
floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
tensors = st.builds(
    common_pb2.Tensor,
    dtype=st.sampled_from([0, 1, 2, 3]) | st.integers(-(2**31), 2**31 - 1),
    shape=st.lists(st.integers(-(2**63), 2**63 - 1), max_size=4)
    | st.sampled_from([[3], [2], [1, 3]]),
    float_values=st.lists(st.floats(width=32, allow_nan=True), max_size=5),
    double_values=st.lists(floats, max_size=5),
    int64_values=st.lists(st.integers(-(2**63), 2**63 - 1), max_size=5),
)


@PROPERTIES
@given(tensor=tensors, schema=st.sampled_from(SCHEMAS))
def test_tensor_to_array_never_raises_anything_but_invalid_argument(
    tensor: common_pb2.Tensor, schema: InputSchema
) -> None:
    try:
        arr = tensor_to_array(tensor, schema, "input")
    except InvalidArgument:
        return
    assert arr.shape == schema.shape
    assert arr.dtype == np.dtype(schema.dtype)
    if schema.dtype != "int64":
        assert np.isfinite(arr.astype(np.float32)).all()


@PROPERTIES
@given(values=st.lists(floats, min_size=3, max_size=3))
def test_accepted_float64_inputs_are_finite_in_float32(values: list[float]) -> None:
    tensor = common_pb2.Tensor(dtype=common_pb2.DATA_TYPE_FLOAT64, double_values=values)
    message = ""
    try:
        arr = tensor_to_array(tensor, SCHEMA64, "input")
    except InvalidArgument as e:
        message = str(e)
    if message:
        assert all(f"{v}" not in message for v in values if math.isfinite(v) and abs(v) >= 1000)
    else:
        with np.errstate(over="raise"):
            assert np.isfinite(arr.astype(np.float32)).all()
