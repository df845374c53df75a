"""What the server received: every reply the ServerApp ever takes from the hubs, on record.

With run config ``received-path`` set, the ServerApp talks to the SuperLink through
:class:`RecordingGrid`, which appends one JSON line per reply it pulls: the round (the
message's group id), the hub's node id, the SHA-256 and size of the reply's content
(Flower's serialized ``RecordDict``) and **every array in it**: the arrays of its array
records and every ``.npy`` payload among its config records' bytes (where SecAgg+ puts
the masked vector), each with its dtype, shape, SHA-256 of its raw bytes, L2 norm and
values. The SuperLink holds the same messages (it stores and forwards them); this is the
ServerApp's view of them.

It is what lets anyone check "the server never holds an individual update": compare each
array with the hubs' own records of their unmasked contributions (their ``fleet.send``
records, ``fleet/egress.py``), as tests/integration/test_fleet_flower.py does.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Final

import numpy as np
from flwr.app import Message, RecordDict
from flwr.common.serde import recorddict_to_proto
from flwr.proto.node_pb2 import NodeInfo
from flwr.serverapp import Grid
from flwr.supercore.run import Run

_NPY_MAGIC: Final = b"\x93NUMPY"


def arrays_in(content: RecordDict) -> Iterator[tuple[str, np.ndarray]]:
    """Every array a reply carries, with where it was: array records' arrays, and bytes
    in config records that are ``.npy`` payloads (SecAgg+'s masked parameters)."""
    for name, record in content.array_records.items():
        for key, array in record.items():
            yield f"arrays/{name}/{key}", array.numpy()
    for name, config in content.config_records.items():
        for key, value in config.items():
            items = value if isinstance(value, list) else [value]
            for i, item in enumerate(items):
                if isinstance(item, bytes) and item.startswith(_NPY_MAGIC):
                    yield f"configs/{name}/{key}[{i}]", _load(item)


def _load(raw: bytes) -> np.ndarray:
    return np.asarray(np.load(io.BytesIO(raw), allow_pickle=False))


def describe(where: str, array: np.ndarray) -> dict[str, Any]:
    flat = np.ascontiguousarray(array).ravel()
    return {
        "where": where,
        "dtype": str(array.dtype),
        "shape": list(array.shape),
        "sha256": hashlib.sha256(flat.tobytes()).hexdigest(),
        "norm": float(np.linalg.norm(flat.astype(np.float64))),
        "values": flat.astype(np.float64).tolist(),
    }


class ReceivedLog:
    """Appends what each reply carried to ``path`` (JSON lines)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def record(self, replies: Iterable[Message]) -> None:
        lines = []
        for msg in replies:
            line: dict[str, Any] = {
                "run": msg.metadata.run_id,
                "round": msg.metadata.group_id,
                "node": msg.metadata.src_node_id,
            }
            if msg.has_error():
                line["error"] = str(msg.error.reason)[:200]
            else:
                content = recorddict_to_proto(msg.content).SerializeToString()
                line["sha256"] = hashlib.sha256(content).hexdigest()
                line["size"] = len(content)
                line["arrays"] = [describe(w, a) for w, a in arrays_in(msg.content)]
            lines.append(json.dumps(line, separators=(",", ":")) + "\n")
        with self._lock, self.path.open("a") as f:
            f.writelines(lines)


class RecordingGrid(Grid):
    """A Grid that hands every reply to ``log`` before the workflow sees it."""

    def __init__(self, inner: Grid, log: ReceivedLog) -> None:
        self.inner = inner
        self.log = log

    def set_run(self, run: Run) -> None:
        self.inner.set_run(run)

    @property
    def run(self) -> Run:
        return self.inner.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def get_nodes(self) -> Iterable[NodeInfo]:
        return self.inner.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(self.inner.pull_messages(message_ids))
        self.log.record(replies)
        return replies

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        replies = list(self.inner.send_and_receive(messages, timeout=timeout))
        self.log.record(replies)
        return replies
