"""The fleet bench's light hub: a Flower ClientApp that answers a round as a hub would,
without a personalization service (``bench/fleet.py`` measures the cloud side).

Its update is a delta of the federated head's size (the round's global parameters), a
random stand-in for training, clipped to the round's C and noised with the hub's share
N(0, (sigma C)^2 / t): the arithmetic of ``services/personalization/federated.py``
(``noised_delta``; tests/unit/bench/test_fleet_hub_app.py checks they agree), kept here
because importing the personalization service pulls in torch, which every
``flwr-clientapp`` process (one per message) would pay for.

Mods, outermost first: :func:`measure_mod` appends the size of every reply (what the hub
sends) and message (what it receives) to the node's ``bench-out`` file; then
``secaggplus_mod`` when the server runs SecAgg+ (its messages carry the SecAgg+ config),
else the plain fit.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from flwr.app import Context, Message
from flwr.client import Client, ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.common import MessageType, NDArrays, Scalar
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from flwr.common.serde import message_to_proto, recorddict_to_proto

from fleet import protocol

#: Node config key: the JSON-lines file this node's messages are measured into.
NODE_OUT: Final = "bench-out"
#: The stand-in "trained" delta's scale: well above C = 1, so clipping always bites.
DELTA_STD: Final = 0.5


def clipped_noised(
    delta: npt.ArrayLike, clip_norm: float, sigma: float, t: int, rng: np.random.Generator
) -> npt.NDArray[np.float32]:
    """``delta`` clipped to L2 norm ``clip_norm``, plus N(0, (sigma C)^2 / t) per value."""
    d = np.asarray(delta, np.float64).ravel()
    norm = float(np.linalg.norm(d))
    if norm > clip_norm:
        d = d * (clip_norm / norm)
    out = d.astype(np.float32)
    while float(np.linalg.norm(out.astype(np.float64))) > clip_norm:
        out = (out.astype(np.float64) * (1 - 1e-6)).astype(np.float32)
    noise = rng.normal(0.0, sigma * clip_norm / math.sqrt(t), size=out.shape)
    return (out.astype(np.float64) + noise).astype(np.float32)


class LightHub(NumPyClient):
    def fit(
        self, parameters: NDArrays, config: dict[str, Scalar]
    ) -> tuple[NDArrays, int, dict[str, Scalar]]:
        size = int(np.asarray(parameters[0]).size)
        rng = np.random.default_rng()
        delta = clipped_noised(
            rng.normal(0.0, DELTA_STD, size),
            float(config[protocol.CLIP_NORM]),
            float(config[protocol.NOISE_MULTIPLIER]),
            int(config[protocol.MIN_PARTICIPANTS]),
            rng,
        )
        return [delta], 1, {}


def client_fn(context: Context) -> Client:
    return LightHub().to_client()


def _stage(msg: Message) -> str:
    records = msg.content.config_records
    if RECORD_KEY_CONFIGS in records and Key.STAGE in records[RECORD_KEY_CONFIGS]:
        return str(records[RECORD_KEY_CONFIGS][Key.STAGE])
    return "plain"


def measure_mod(msg: Message, ctxt: Context, call_next: Any) -> Message:
    """Append what this message and its reply weigh on the wire (Flower's serialized
    message: metadata and content; the HTTP/TLS framing is extra)."""
    if msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, ctxt)  # type: ignore[no-any-return]
    stage = _stage(msg)
    received = message_to_proto(msg).ByteSize()
    reply: Message = call_next(msg, ctxt)
    line = {
        "run": msg.metadata.run_id,
        "node": msg.metadata.dst_node_id,
        "round": msg.metadata.group_id,
        "stage": stage,
        "received": received,
        "sent": message_to_proto(reply).ByteSize(),
        "sent_content": 0 if reply.has_error() else recorddict_to_proto(reply.content).ByteSize(),
        "error": reply.has_error(),
        "pid": os.getpid(),
    }
    out = Path(str(ctxt.node_config[NODE_OUT]))
    with out.open("a") as f:
        f.write(json.dumps(line) + "\n")
    return reply


def secagg_if_asked(msg: Message, ctxt: Context, call_next: Any) -> Message:
    """Flower's ``secaggplus_mod`` for the server's SecAgg+ messages; plain fit else."""
    if _stage(msg) == "plain":
        return call_next(msg, ctxt)  # type: ignore[no-any-return]
    return secaggplus_mod(msg, ctxt, call_next)


app = ClientApp(client_fn=client_fn, mods=[measure_mod, secagg_if_asked])
