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

Execution providers: :func:`open_session` takes an ordered preference (configuration:
``[inference] execution_providers``, e.g. ``OpenVINOExecutionProvider`` on Intel hubs
with the ``onnxruntime-openvino`` wheel). Providers this onnxruntime build lacks are
skipped with one warning naming them and what is available; the CPU provider always
comes last, so a session always opens.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Final

TELEMETRY_ENV: Final = "ORT_DISABLE_TELEMETRY"
os.environ[TELEMETRY_ENV] = "1"

import onnxruntime as ort  # noqa: E402 - only after the variable is set (see above)

ort.disable_telemetry_events()

__all__ = ["CPU", "TELEMETRY_ENV", "choose_providers", "open_session", "ort", "provider_of"]

log = logging.getLogger(__name__)

#: The provider every build has, and the last resort.
CPU: Final = "CPUExecutionProvider"
_warned: set[tuple[str, ...]] = set()


def choose_providers(requested: Sequence[str]) -> tuple[list[str], list[str]]:
    """``requested`` (in order) that this build has, then the CPU provider; and the
    requested ones it lacks."""
    available = set(ort.get_available_providers())
    chosen = [p for p in dict.fromkeys(requested) if p in available and p != CPU]
    missing = [p for p in dict.fromkeys(requested) if p not in available]
    return [*chosen, CPU], missing


def open_session(
    path: Path, threads: int = 1, providers: Sequence[str] = (CPU,)
) -> ort.InferenceSession:
    """A session on ``path`` with the first available of ``providers`` (then CPU):
    ``threads`` intra-op threads, sequential execution, every graph optimization."""
    chosen, missing = choose_providers(providers)
    if missing and tuple(missing) not in _warned:
        _warned.add(tuple(missing))
        log.warning(
            "onnxruntime %s has no %s (available: %s); falling back to %s",
            ort.__version__,
            ", ".join(missing),
            ", ".join(ort.get_available_providers()),
            chosen[0],
        )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=opts, providers=chosen)


def provider_of(session: ort.InferenceSession) -> str:
    """The provider a session prefers (the first it registered)."""
    return str(session.get_providers()[0])
