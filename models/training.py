"""Torch helpers shared by the task networks (``net``) and training recipes (``train``).

Importing this module imports torch; serving code never does.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch
from torch import nn


def make_deterministic() -> None:
    """Bitwise-reproducible CPU training: one thread, deterministic kernels."""
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


def const(values: npt.ArrayLike) -> torch.Tensor:
    """A float32 constant (a buffer baked into the exported graph)."""
    return torch.from_numpy(np.asarray(values, dtype=np.float32))


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
