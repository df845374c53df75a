"""CPU per PredictBatch call at a fixed batch size, on both ends of a real mTLS channel.

The end-to-end CPU per decision depends on how large the hub's batches grow, which
depends on the machine's load; a fixed batch size does not. This drives a real
inference process with ``calls`` sequential PredictBatch calls (explanations on, as the
hub asks) of ``rows`` readings each and reports the server's CPU per call
(``/proc/<pid>/stat``) and the caller's (this process: the hub's side of a call), so a
change can be judged as a per-call cost and a per-row cost.

``python -m bench.cost_calls [calls]``
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.cost import cpu_seconds, load_average
from cli.stack import Stack
from roost.inference.v1 import inference_service_pb2 as inf_pb
from roost.inference.v1 import inference_service_pb2_grpc as inf_grpc
from services.kit.auth import Role
from services.kit.client import aio_channel
from services.kit.tensors import array_to_tensor

ROWS = (1, 8, 64)
OCCUPANCY_INPUT = (21.0, 27.0, 400.0, 700.0, 0.5, -0.8)


async def per_call(port: int, certs: Path, pid: int, rows: int, calls: int) -> dict[str, float]:
    rng = np.random.default_rng(rows)
    base = np.asarray(OCCUPANCY_INPUT, dtype=np.float32)
    inputs = [
        array_to_tensor(base * rng.uniform(0.9, 1.1, 6).astype(np.float32)) for _ in range(rows)
    ]
    request = inf_pb.PredictBatchRequest(
        model_name="occupancy",
        inputs=inputs,
        entity_ids=[f"occupancy.room{i}" for i in range(rows)],
        explain_top_k=3,
    )
    async with aio_channel(
        f"127.0.0.1:{port}", certs_dir=certs, role=Role.HUB, server_role=Role.INFERENCE
    ) as ch:
        stub = inf_grpc.InferenceServiceStub(ch)
        for _ in range(50):  # warm up
            await stub.PredictBatch(request, timeout=5)
        server0, client0, wall0 = cpu_seconds(pid), time.process_time(), time.perf_counter()
        for _ in range(calls):
            await stub.PredictBatch(request, timeout=5)
        server1, client1, wall1 = cpu_seconds(pid), time.process_time(), time.perf_counter()
    return {
        "rows": rows,
        "server_cpu_ms_per_call": 1000 * (server1 - server0) / calls,
        "client_cpu_ms_per_call": 1000 * (client1 - client0) / calls,
        "wall_ms_per_call": 1000 * (wall1 - wall0) / calls,
    }


async def measure(calls: int) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory(prefix="roost-calls-") as tmp,
        Stack(Path(tmp), hub_id="bench", log_level="WARNING") as stack,
    ):
        info = stack.start_service(Role.INFERENCE)
        pid = stack.procs["inference"].popen.pid
        results = [
            await per_call(int(info["port"]), stack.certs_dir, pid, rows, calls) for rows in ROWS
        ]
    return {"calls": calls, "predict_batch": results, "load_average": load_average()}


def main() -> int:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    print(json.dumps(asyncio.run(measure(calls)), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
