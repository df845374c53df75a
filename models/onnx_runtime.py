"""onnxruntime for every Roost process, with its telemetry off before it starts.

Since 1.29 the Linux onnxruntime wheel carries a telemetry uploader (1DS) that looks up
and contacts a Microsoft host a few seconds after the runtime starts. Roost promises
that nothing leaves the hub unannounced, so every process imports onnxruntime through
this module only (an import contract in ``.importlinter`` enforces it):

* ``ORT_DISABLE_TELEMETRY=1`` is set *before* the first ``import onnxruntime``. The
  runtime reads it once, when its environment is created at import; set later it does
  nothing (measured: 20 DNS lookups in 40 s with the variable set after the import,
  none with it set before). It is set unconditionally: no configuration turns it on.
* ``disable_telemetry_events()`` is called as well, the API's own switch (alone it does
  not stop the uploader; it stops the events a runtime would still log).

Child processes inherit the variable. The container images and k3s manifests set it too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

TELEMETRY_ENV: Final = "ORT_DISABLE_TELEMETRY"
os.environ[TELEMETRY_ENV] = "1"

import onnxruntime as ort  # noqa: E402 - only after the variable is set (see above)

ort.disable_telemetry_events()

__all__ = ["TELEMETRY_ENV", "open_session", "ort"]


def open_session(path: Path, threads: int = 1) -> ort.InferenceSession:
    """A CPU session on ``path``: ``threads`` intra-op threads, sequential execution,
    every graph optimization."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
