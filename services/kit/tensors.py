"""The one conversion between numpy arrays and ``roost.common.v1.Tensor``.

:func:`array_to_tensor` builds the wire form of a float32 feature vector (hub,
personalization); :func:`tensor_to_array` checks a received tensor against a model's
input schema — dtype, shape, NaN and infinity — and returns it as an array
(inference). Errors name the field (``inputs[3].float_values[2] (co2)``) and never the
value.
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


def _dtype_name(value: int) -> str:
    known = {int(v): k for k, v in common_pb2.DataType.items()}
    return known.get(value, str(value))


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
            f"{where}.shape: {list(shape)} does not match the model's {list(schema.shape)}"
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
        finite = np.isfinite(arr)
        if not finite.all():
            i = int(np.argmin(finite))
            bad = "NaN" if np.isnan(arr[i]) else "infinity"
            feature = schema.features[i % len(schema.features)].name
            raise InvalidArgument(f"{where}.{field}[{i}] ({feature}): {bad} is not allowed")
    return arr.reshape(schema.shape)


def array_to_tensor(x: npt.NDArray[np.float32]) -> common_pb2.Tensor:
    """A float32 array as a ``Tensor`` of the same shape (row-major values)."""
    return common_pb2.Tensor(
        dtype=common_pb2.DATA_TYPE_FLOAT32, shape=list(x.shape), float_values=x.ravel().tolist()
    )
