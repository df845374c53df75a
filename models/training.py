"""Torch helpers shared by the task networks (``net``) and training recipes (``train``).

Importing this module imports torch; serving code never does.
"""

from __future__ import annotations

from collections.abc import Callable

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


def train_epoch(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    n: int,
    *,
    batch_size: int,
    gen: torch.Generator,
    batch_loss: Callable[[torch.Tensor], torch.Tensor],
) -> float:
    """One epoch of shuffled minibatches (``gen`` draws the order), one optimizer step
    per batch on ``batch_loss(indices)``; returns the mean loss per row. Leaves the
    model in training mode."""
    model.train()
    order = torch.randperm(n, generator=gen)
    total = 0.0
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        opt.zero_grad()
        loss = batch_loss(batch)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        total += float(loss.item()) * len(batch)
    return total / n
