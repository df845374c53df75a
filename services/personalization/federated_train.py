"""The local step of a fleet round: train the model's head on the household's examples.

Federated parameters are the model's *head* (its last layer); the trunk stays the hub's
active model. The hub loads the fleet's global head into its active model, trains only
the head on its own examples (plain full-batch Adam: the privacy of what leaves comes
from clipping and noising the delta in :mod:`.federated`, over the household's whole
data), and returns ``trained - global``. torch is imported here only, lazily.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from services.kit.errors import FailedPrecondition, InvalidArgument

F32Array = npt.NDArray[np.float32]
I64Array = npt.NDArray[np.int64]

#: The federated head of each model family (a submodule name of its torch module).
HEADS: Final = {"occupancy": "mlp.4"}


def local_head_delta(
    base_onnx: Path,
    task: str,
    global_head: F32Array,
    x: F32Array,
    y: I64Array,
    *,
    epochs: int = 60,
    lr: float = 0.05,
    seed: int = 0,
) -> F32Array:
    """``trained_head - global_head`` after ``epochs`` full-batch steps on ``(x, y)``."""
    import torch  # noqa: PLC0415 - torch only in the local step

    from services.personalization.onnx_roundtrip import base_model  # noqa: PLC0415

    if task not in HEADS:
        raise FailedPrecondition(f"fleet learning supports {', '.join(HEADS)}, not {task}")
    torch.manual_seed(seed)
    model = base_model(task, base_onnx)
    flat = np.asarray(global_head, dtype=np.float32).ravel()
    params = load_head(model, task, flat, "global_parameters")
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    xt, yt = torch.from_numpy(np.asarray(x, np.float32)), torch.from_numpy(np.asarray(y, np.int64))
    opt = torch.optim.Adam(params, lr=lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    for _ in range(epochs):
        opt.zero_grad()
        loss = loss_fn(model.logits(xt), yt)  # type: ignore[operator]
        loss.backward()
        opt.step()
    trained = torch.cat([p.detach().reshape(-1) for p in params]).numpy()
    return (trained.astype(np.float64) - flat.astype(np.float64)).astype(np.float32)


def load_head(model: Any, task: str, head: F32Array, what: str = "head") -> list[Any]:
    """Copy the flat ``head`` into ``model``'s federated head (in place); returns its
    parameters. InvalidArgument (naming ``what``) if the size differs or a value is not
    finite: nothing is copied then."""
    import torch  # noqa: PLC0415

    if task not in HEADS:
        raise FailedPrecondition(f"fleet learning supports {', '.join(HEADS)}, not {task}")
    params = list(model.get_submodule(HEADS[task]).parameters())
    size = sum(p.numel() for p in params)
    flat = np.asarray(head, dtype=np.float32).ravel()
    if flat.size != size:
        raise InvalidArgument(f"{what}: {flat.size} values, the {task} head has {size}")
    if not np.all(np.isfinite(flat)):
        raise InvalidArgument(f"{what}: not finite")
    with torch.no_grad():
        offset = 0
        for p in params:
            p.copy_(torch.from_numpy(flat[offset : offset + p.numel()].copy()).view_as(p))
            offset += p.numel()
    return params


def head_of(base_onnx: Path, task: str) -> F32Array:
    """The head of the model at ``base_onnx``, flattened (the fleet's starting point)."""
    import torch  # noqa: PLC0415

    from services.personalization.onnx_roundtrip import base_model  # noqa: PLC0415

    head = base_model(task, base_onnx).get_submodule(HEADS[task])
    return torch.cat([p.detach().reshape(-1) for _, p in head.named_parameters()]).numpy()
