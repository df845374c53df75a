"""The seeded minibatch training loop of the shipped routine recipe.

:func:`fit` trains a fresh :class:`models.routine.net.RoutineNet`; the recipe
(``models.routine.train``) runs it per cross-validation fold and on all days, and the
privacy-utility bench trains its base models with it. Imports torch but no CLI or
display code.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from models.routine.net import F32Array, Hyper, I64Array, RoutineNet, class_weights
from models.training import train_epoch


def fit(
    x: F32Array,
    y: I64Array,
    *,
    hp: Hyper,
    seed: int,
    on_epoch: Callable[[float], None],
) -> RoutineNet:
    """Train a fresh, seeded model for ``hp.epochs`` epochs of shuffled minibatches."""
    torch.manual_seed(seed)
    model = RoutineNet(x, hp.hidden, hp.dropout)
    loss_fn = nn.CrossEntropyLoss(weight=class_weights(y, hp.class_weight_power))
    opt = torch.optim.Adam(model.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(hp.epochs):
        mean = train_epoch(
            model,
            opt,
            len(xt),
            batch_size=hp.batch_size,
            gen=gen,
            batch_loss=lambda b: loss_fn(model.logits(xt[b]), yt[b]),
        )
        on_epoch(mean)
    model.eval()
    return model
