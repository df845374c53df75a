"""The health gate against validly signed bad models, under live Predict traffic.

A real stack (audit, inference, update over mTLS) and a real TUF repository publishing
the bad versions of ``bench/bad_models.py``. Each scenario stages one (TUF-verified) and
puts it in shadow, while :class:`Load` calls ``Predict`` continuously as the hub would
(occupied and vacant rooms, several entities); it ends when the candidate is withdrawn
— refused at stage, or rolled back by the gate — and reports how long that took, what
the audit log says, and what callers saw (failed calls, NaN served, versions).

Used by ``tests/integration/test_update_gate.py`` (asserts) and ``bench/update.py``
(times, in ``make bench``).
"""

from __future__ import annotations

import asyncio
import math
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from bench.bad_models import OCCUPIED, VACANT, attach_shipped_canary, bad_version, occupancy_copy
from bench.report import markdown_table
from cli.stack import Stack
from cli.tuf_repo import ModelRepository
from roost.audit.v1 import audit_service_pb2 as audit_pb
from roost.audit.v1 import audit_service_pb2_grpc as audit_grpc
from roost.common.v1 import common_pb2
from roost.inference.v1 import inference_service_pb2 as inf_pb
from roost.inference.v1 import inference_service_pb2_grpc as inf_grpc
from roost.update.v1 import update_service_pb2 as pb
from roost.update.v1 import update_service_pb2_grpc as pb_grpc
from services.kit.auth import Role
from services.kit.client import aio_channel
from services.modelstore.bundle import pack_bundle


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str  # bench.bad_models kind
    version: str
    # "stage": expected refused at stage; "shadow": rolled back by the gate in shadow;
    # "ab": staged straight to A/B (refused), then shadow (rolled back).
    path: str
    canary: bool = False


SCENARIOS = (
    Scenario("wrong input schema", "wrong_schema", "1.1.0", "stage"),
    Scenario("fails to load", "fails_to_load", "1.2.0", "stage"),
    Scenario("NaN outputs", "nan_outputs", "1.3.0", "shadow"),
    Scenario("25x slower", "slow", "1.4.0", "shadow"),
    Scenario("label-inverted", "label_inverted", "1.5.0", "shadow"),
    Scenario("A/B-only (label-inverted)", "label_inverted", "1.6.0", "ab"),
    Scenario("label-inverted, canary shipped", "label_inverted", "1.7.0", "stage", canary=True),
)


#: A good version (the shipped weights) the repository also publishes.
GOOD = "1.8.0"
#: The entities :class:`Load` predicts for.
LOAD_ENTITIES = tuple(f"occupancy.room{i}" for i in range(8))


def gate_env(min_compared: int, check_seconds: float) -> dict[str, str]:
    """The update service's health-gate settings for a fast, still meaningful run."""
    return {
        "ROOST_UPDATE_HEALTH_CHECK_SECONDS": str(check_seconds),
        "ROOST_UPDATE_MIN_COMPARED": str(min_compared),
        # Active session.run is ~0.1 ms here: judge ratios above half a millisecond.
        "ROOST_UPDATE_LATENCY_FLOOR_SECONDS": "0.0005",
    }


@contextmanager
def gate_stack(tmp: Path, env: dict[str, str]) -> Iterator[Stack]:
    """A stack whose TUF repository publishes every scenario's bad version."""
    repo = ModelRepository.create(tmp / "repo", tmp / "keys")
    for s in SCENARIOS:
        src = bad_version(tmp / "src", s.kind, s.version)
        if s.canary:
            attach_shipped_canary(src)
        repo.publish("occupancy", pack_bundle(src, tmp / f"b-{s.version}.tar").path, s.version)
    good = occupancy_copy(tmp / "src", GOOD)
    repo.publish("occupancy", pack_bundle(good, tmp / f"b-{GOOD}.tar").path, GOOD)
    trusted = tmp / "trusted-root.json"
    shutil.copy(repo.root_path, trusted)
    stack = Stack(tmp / "home", hub_id="gate", log_level="WARNING")
    try:
        stack.start_service(Role.AUDIT)
        stack.start_service(Role.INFERENCE)
        stack.start_service(
            Role.UPDATE,
            {
                "ROOST_UPDATE_TUF_SOURCE": str(tmp / "repo"),
                "ROOST_UPDATE_TUF_TRUSTED_ROOT": str(trusted),
                **env,
            },
        )
        yield stack
    finally:
        stack.stop()


def channel(stack: Stack, server: Role, role: Role) -> grpc.aio.Channel:
    return aio_channel(
        f"127.0.0.1:{stack.port_of(server)}",
        certs_dir=stack.certs_dir,
        role=role,
        server_role=server,
    )


def _request(i: int) -> inf_pb.PredictRequest:
    values = OCCUPIED if i % 2 else VACANT
    tensor = common_pb2.Tensor(dtype=common_pb2.DATA_TYPE_FLOAT32, shape=[6], float_values=values)
    return inf_pb.PredictRequest(
        model_name="occupancy", input=tensor, entity_id=LOAD_ENTITIES[i % len(LOAD_ENTITIES)]
    )


@dataclass
class Load:
    """Continuous Predict calls as the hub makes them; what callers saw."""

    stub: inf_grpc.InferenceServiceAsyncStub
    ok: int = 0
    failed: list[str] = field(default_factory=list)
    non_finite: int = 0
    versions: set[str] = field(default_factory=set)

    async def run(self, stop: asyncio.Event, offset: int) -> None:
        i = offset
        while not stop.is_set():
            try:
                resp = await self.stub.Predict(_request(i), timeout=5)
                p = resp.prediction
                self.ok += 1
                self.versions.add(p.model.version)
                if not all(math.isfinite(v) for v in [*p.values, p.confidence]):
                    self.non_finite += 1
            except grpc.aio.AioRpcError as e:
                self.failed.append(f"{e.code().name}: {e.details()}")
            i += 3
            await asyncio.sleep(0.002)


@asynccontextmanager
async def running_load(stack: Stack, tasks: int = 3) -> AsyncIterator[Load]:
    """:class:`Load` from ``tasks`` concurrent callers (as the hub) until the block ends."""
    ch = channel(stack, Role.INFERENCE, Role.HUB)
    load = Load(inf_grpc.InferenceServiceStub(ch))
    stop = asyncio.Event()
    running = [asyncio.create_task(load.run(stop, i)) for i in range(tasks)]
    try:
        yield load
    finally:
        stop.set()
        await asyncio.gather(*running)
        await ch.close()


@dataclass(frozen=True)
class Outcome:
    scenario: str
    ended: str  # "refused at stage" | "rolled back"
    seconds: float  # from the step that started it to the candidate being withdrawn
    reason: str  # the refusal, or the audited rollback reason
    ab_refusal: str = ""  # A/B-only: why A/B was refused


class Gate:
    """The update service and the audit log, as the scenarios drive and read them."""

    def __init__(self, stack: Stack) -> None:
        self.update = pb_grpc.UpdateServiceStub(channel(stack, Role.UPDATE, Role.ADMIN))
        self.audit = audit_grpc.AuditServiceStub(channel(stack, Role.AUDIT, Role.AUDITOR))

    async def status(self) -> pb.RolloutStatus:
        request = pb.GetRolloutStatusRequest(model_name="occupancy")
        return (await self.update.GetRolloutStatus(request, timeout=5)).status

    async def last_step(self) -> tuple[str, str]:
        request = audit_pb.QueryDecisionsRequest(entity_id="roost.model.occupancy", page_size=100)
        entries: list[audit_pb.LogEntry] = []
        while True:
            resp = await self.audit.QueryDecisions(request, timeout=5)
            entries.extend(resp.entries)
            if not resp.next_page_token:
                break
            request.page_token = resp.next_page_token
        d = entries[-1].decision
        return d.action, d.policy.reason

    async def start(self, stage: pb.RolloutStage.ValueType) -> None:
        request = pb.StartRolloutRequest(model_name="occupancy", stage=stage, candidate_share=0.5)
        await self.update.StartRollout(request, timeout=10)

    async def withdrawn(self, since: float, within: float) -> float:
        """Seconds from ``since`` until the candidate is gone (status polled every 20 ms)."""
        deadline = time.monotonic() + within
        while (await self.status()).candidate.version:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the gate did not roll back within {within:g} s")
            await asyncio.sleep(0.02)
        return time.monotonic() - since


async def run_scenario(gate: Gate, s: Scenario, within: float = 60.0) -> Outcome:
    """Stage ``s``'s version and follow it until it is withdrawn (see module doc)."""
    t0 = time.monotonic()
    try:
        await gate.update.Stage(
            pb.StageRequest(model_name="occupancy", version=s.version), timeout=60
        )
    except grpc.aio.AioRpcError as e:
        if e.code() != grpc.StatusCode.FAILED_PRECONDITION:
            raise
        return Outcome(s.name, "refused at stage", time.monotonic() - t0, e.details() or "")
    ab_refusal = ""
    if s.path == "ab":
        t0 = time.monotonic()
        try:
            await gate.start(pb.ROLLOUT_STAGE_AB)
            raise AssertionError("A/B straight from staged was accepted")
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.FAILED_PRECONDITION:
                raise
            ab_refusal = e.details() or ""
    t0 = time.monotonic()
    await gate.start(pb.ROLLOUT_STAGE_SHADOW)
    seconds = await gate.withdrawn(t0, within)
    action, reason = await gate.last_step()
    if action != "update.rollback":
        raise AssertionError(f"the last audited step is {action}, not a rollback")
    return Outcome(s.name, "rolled back", seconds, reason, ab_refusal)


async def _all(stack: Stack, rounds: int) -> dict[str, Any]:
    gate = Gate(stack)
    rows: list[dict[str, Any]] = []
    async with running_load(stack) as load:
        for s in SCENARIOS:
            outcomes = [await run_scenario(gate, s) for _ in range(rounds)]  # re-stageable
            times = sorted(o.seconds for o in outcomes)
            last = outcomes[-1]
            rows.append(
                {
                    "scenario": s.name,
                    "ended": sorted({o.ended for o in outcomes}),
                    "median_s": times[len(times) // 2],
                    "max_s": times[-1],
                    "rounds": rounds,
                    "reason": last.reason,
                    "ab_refusal": last.ab_refusal,
                }
            )
    callers = {
        "predict_ok": load.ok,
        "predict_failed": len(load.failed),
        "non_finite_served": load.non_finite,
        "versions_served": sorted(load.versions),
    }
    return {"scenarios": rows, "callers": callers}


def gate_bench(
    tmp: Path, rounds: int, min_compared: int = 200, check_seconds: float = 0.5
) -> dict[str, Any]:
    """Every scenario ``rounds`` times under load: median and max time to the end."""
    with gate_stack(tmp, gate_env(min_compared, check_seconds)) as stack:
        result = asyncio.run(_all(stack, rounds))
    return {"min_compared": min_compared, "check_seconds": check_seconds, **result}


def callers_ok(g: dict[str, Any]) -> bool:
    c = g["callers"]
    return bool(c["predict_failed"] == 0 and c["non_finite_served"] == 0)


def render_gate(g: dict[str, Any]) -> str:
    table = markdown_table(
        ["bad model", "ended", "median s", "max s", "rounds", "why (last round)"],
        [
            (
                r["scenario"],
                ", ".join(r["ended"]),
                f"{r['median_s']:.2f}",
                f"{r['max_s']:.2f}",
                r["rounds"],
                (r["ab_refusal"] + " / then: " if r["ab_refusal"] else "") + r["reason"],
            )
            for r in g["scenarios"]
        ],
    )
    c = g["callers"]
    return (
        f"## 3. Health gate: validly signed bad models under live Predict traffic"
        f" (min_compared {g['min_compared']}, gate every {g['check_seconds']:g} s)\n\n"
        "Time from Stage to the refusal, or from the start of shadow to the rollback (the"
        " candidate gone from the registry).\n\n"
        + table
        + f"\n\nCallers: {c['predict_ok']:,} Predict calls answered, {c['predict_failed']}"
        f" failed, {c['non_finite_served']} with NaN or infinity, versions served"
        f" {c['versions_served']}: {'PASS' if callers_ok(g) else '**FAIL**'}."
    )
