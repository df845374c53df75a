"""Shared artifact steps of every training recipe: ONNX export, int8, parity, timing.

``export_onnx`` needs torch (imported inside it: only training calls it). The rest is
torch-free (onnxruntime.quantization), so the benchmark and tests can use it.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from models.onnx_runtime import open_session, ort

OPSET = 17


def export_onnx(
    model: Any,
    example: Any,
    path: Path,
    *,
    input_name: str = "features",
    output_name: str,
    doc: str = "",
) -> None:
    """Export a torch module to ONE self-contained ONNX file with a dynamic batch axis."""
    import onnx  # noqa: PLC0415 - training-only dependencies
    import torch  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / path.name
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of dynamo, but produces
            # these small static graphs as one plain file.
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                model,
                (example,),
                str(raw),
                input_names=[input_name],
                output_names=[output_name],
                dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
                opset_version=OPSET,
                dynamo=False,
            )
        proto = onnx.load(str(raw), load_external_data=True)
    proto.doc_string = doc
    onnx.checker.check_model(proto, full_check=True)
    onnx.save_model(proto, str(path), save_as_external_data=False)


def quantize_int8(fp32: Path, int8: Path) -> None:
    """Dynamic int8 quantization of the weights (MatMul/Gemm), activations stay float."""
    # After models.onnx_runtime (imported above) turned the runtime's telemetry off.
    from onnxruntime.quantization import QuantType, quantize_dynamic  # noqa: PLC0415 - needs onnx

    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)


def session(path: Path) -> ort.InferenceSession:
    """A single-threaded CPU session (what the evaluations and parity checks use)."""
    return open_session(path, threads=1)


def run(path: Path, x: npt.NDArray[np.float32], input_name: str, output_name: str) -> Any:
    (out,) = session(path).run([output_name], {input_name: x})
    return np.asarray(out, dtype=np.float32)


@dataclass(frozen=True)
class Latency:
    """session.run latency of one row, in microseconds."""

    p50_us: float
    p99_us: float


def latency(
    path: Path, row: npt.NDArray[np.float32], input_name: str, calls: int = 2000
) -> Latency:
    sess = session(path)
    x = row[None, ...]
    for _ in range(50):
        sess.run(None, {input_name: x})
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        sess.run(None, {input_name: x})
        times.append((time.perf_counter() - t0) * 1e6)
    times.sort()
    return Latency(times[len(times) // 2], times[int(len(times) * 0.99)])


# int8 pays when the weights dominate the file (and so the memory traffic): at least
# halved. Timing is too noisy on shared machines to decide a reproducible artifact by,
# so it is measured and reported (model card, `make bench`) but does not choose.
INT8_MAX_SIZE_RATIO = 0.5


def serve_int8(fp32_bytes: int, int8_bytes: int, quality_loss: float, max_loss: float) -> bool:
    """Whether to serve int8: much smaller, and within the task's quality tolerance."""
    return int8_bytes <= INT8_MAX_SIZE_RATIO * fp32_bytes and quality_loss <= max_loss
