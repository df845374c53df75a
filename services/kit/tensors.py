"""The one conversion between numpy arrays and ``roost.common.v1.Tensor``.

:func:`array_to_tensor` builds the wire form of a float32 feature vector (hub,
personalization); :func:`tensor_to_array` checks a received tensor against a model's
input schema — dtype, shape, NaN, infinity and values beyond float32's range (a
float64 1e39 would overflow every float32 step after it) — and returns it as an array
(inference). Errors name the field (``inputs[3].float_values[2] (co2)``) and never the
value; a long shape is summarized, not echoed.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from models.manifest import DType, InputSchema
from roost.common.v1 import common_pb2
from services.kit.errors import InvalidArgument

DTYPE_ENUM: dict[DType, common_pb2.DataType.ValueType] = {
    "float32": common_pb2.DATA_TYPE_FLOAT32,
    "float64": common_pb2.DATA_TYPE_FLOAT64,
    "int64": common_pb2.DATA_TYPE_INT64,
}
_VALUE_FIELD = {
    common_pb2.DATA_TYPE_FLOAT32: "float_values",
    common_pb2.DATA_TYPE_FLOAT64: "double_values",
    common_pb2.DATA_TYPE_INT64: "int64_values",
}
_NP_DTYPE = {"float32": np.float32, "float64": np.float64, "int64": np.int64}
# The largest finite float32; float values must convert to float32 without overflow.
FLOAT32_MAX = float(np.finfo(np.float32).max)
# Shapes with more dimensions than this are described by their length in errors.
MAX_SHOWN_DIMS = 8


def _dtype_name(value: int) -> str:
    known = {int(v): k for k, v in common_pb2.DataType.items()}
    return known.get(value, str(value))


def _shape_text(shape: tuple[int, ...]) -> str:
    return str(list(shape)) if len(shape) <= MAX_SHOWN_DIMS else f"{len(shape)} dimensions"


def _check_float_values(
    arr: npt.NDArray[np.generic], schema: InputSchema, where: str, field: str
) -> None:
    """InvalidArgument naming the first value that is not finite in float32."""
    ok = np.isfinite(arr) & (np.abs(arr) <= FLOAT32_MAX)
    if ok.all():
        return
    i = int(np.argmin(ok))
    if np.isnan(arr[i]):
        bad = "NaN"
    elif np.isinf(arr[i]):
        bad = "infinity"
    else:
        bad = "a value beyond float32's range"
    feature = schema.features[i % len(schema.features)].name
    raise InvalidArgument(f"{where}.{field}[{i}] ({feature}): {bad} is not allowed")


def tensor_to_array(
    tensor: common_pb2.Tensor, schema: InputSchema, where: str
) -> npt.NDArray[np.generic]:
    """Check ``tensor`` against ``schema`` and return it as an array of the schema's shape."""
    expected = DTYPE_ENUM[schema.dtype]
    if tensor.dtype == common_pb2.DATA_TYPE_UNSPECIFIED:
        raise InvalidArgument(f"{where}.dtype: required ({_dtype_name(expected)} for this model)")
    if tensor.dtype != expected:
        raise InvalidArgument(
            f"{where}.dtype: {_dtype_name(tensor.dtype)} does not match the model's "
            f"{_dtype_name(expected)}"
        )
    shape = tuple(tensor.shape)
    if shape and shape != schema.shape:
        raise InvalidArgument(
            f"{where}.shape: {_shape_text(shape)} does not match the model's {list(schema.shape)}"
        )
    field = _VALUE_FIELD[expected]
    for other in _VALUE_FIELD.values():
        if other != field and len(getattr(tensor, other)):
            raise InvalidArgument(f"{where}.{other}: must be empty when dtype is {schema.dtype}")
    values = getattr(tensor, field)
    if len(values) != schema.size:
        names = ", ".join(schema.feature_names())
        raise InvalidArgument(
            f"{where}.{field}: {len(values)} values, the model takes {schema.size} "
            f"(shape {list(schema.shape)}, features: {names})"
        )
    arr = np.fromiter(values, dtype=_NP_DTYPE[schema.dtype], count=schema.size)
    if schema.dtype != "int64":
        _check_float_values(arr, schema, where, field)
    return arr.reshape(schema.shape)


def array_to_tensor(x: npt.NDArray[np.float32]) -> common_pb2.Tensor:
    """A float32 array as a ``Tensor`` of the same shape (row-major values)."""
    return common_pb2.Tensor(
        dtype=common_pb2.DATA_TYPE_FLOAT32, shape=list(x.shape), float_values=x.ravel().tolist()
    )
