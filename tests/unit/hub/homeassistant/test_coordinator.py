"""The coordinator: polled states for the entities, the service calls behind commands,
and failed calls to services translated once (``services.kit.peers``)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable
from typing import Any

import grpc
import pytest

from hub.homeassistant.coordinator import Coordinator
from hub.homeassistant.entities import ModelInfo
from hub.homeassistant.fleet_entities import FleetStatus
from hub.homeassistant.metrics import COMMANDS, FEEDBACK
from hub.homeassistant.settings import Settings
from roost.common.v1 import common_pb2
from roost.inference.v1 import inference_service_pb2 as inf_pb
from roost.personalization.v1 import personalization_service_pb2 as pers_pb
from roost.update.v1 import update_service_pb2 as upd_pb

# A peer's details may quote the caller's input: they must never reach a log or entity.
SECRET = "co2=1234 ppm"


class RpcError(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=SECRET)


class Failing:
    """Every RPC fails with ``code``."""

    def __init__(self, code: grpc.StatusCode) -> None:
        self.code = code
        self.calls: list[str] = []

    def __getattr__(self, method: str) -> Any:
        async def call(request: Any, timeout: float) -> Any:
            self.calls.append(method)
            raise RpcError(self.code)

        return call


class Harness:
    """A coordinator of hub ``home-1`` whose pushes and spawned tasks are kept."""

    def __init__(self, inference: Any = None, **kwargs: Any) -> None:
        self.pushed: dict[str, tuple[bytes, bool]] = {}
        self.spawned: list[Awaitable[None]] = []
        self.c = Coordinator(
            hub_id="home-1",
            models=[ModelInfo("occupancy", ("vacant", "occupied"), "1.0.0")],
            settings=Settings(),
            inference=inference,
            push=lambda topic, payload, retain: self.pushed.__setitem__(topic, (payload, retain)),
            spawn=self.spawned.append,
            **{
                "personalization": None,
                "update": None,
                "fleet": FleetStatus(enabled=False, audit=None),
                **kwargs,
            },
        )

    def state(self, key: str) -> Any:
        payload, retain = self.pushed[f"roost/home-1/ha/state/{key}"]
        assert retain
        return json.loads(payload)

    async def run_spawned(self) -> None:
        while self.spawned:
            await self.spawned.pop(0)


def model_status(samples: int) -> inf_pb.GetModelStatusResponse:
    return inf_pb.GetModelStatusResponse(
        active=inf_pb.RoleHealth(
            model=common_pb2.ModelRef(name="occupancy", version="1.0.0"), loaded=True
        ),
        drift_monitored=True,
        drift=[inf_pb.FeatureDrift(feature="co2", psi=0.9, ks=0.5, samples=samples)],
    )


def test_drift_needs_enough_live_samples() -> None:
    class Inference:
        def __init__(self, samples: int) -> None:
            self.samples = samples

        async def GetModelStatus(self, request: Any, timeout: float) -> Any:
            return model_status(self.samples)

    for samples, expected in ((12, "OFF"), (5000, "ON")):
        h = Harness(Inference(samples))
        asyncio.run(h.c.poll_model("occupancy"))
        assert h.state("occupancy_status")["drift"] == expected, samples


def test_drift_starts_personalization_once_per_cooldown_unless_paused() -> None:
    started: list[Any] = []

    class Pers:
        async def StartTraining(self, request: Any, timeout: float) -> Any:
            started.append((request.model_name, request.target_epsilon))

    h = Harness(personalization=Pers(), drift_retrain_seconds=3600.0, drift_retrain_epsilon=0.5)
    for _ in range(3):  # drifting on every poll: one run per cooldown
        h.c.maybe_retrain("occupancy")
    h.c.maybe_retrain("comfort")  # not personalizable
    asyncio.run(h.run_spawned())
    h.c.settings.learning_mode = "paused"
    h.c.maybe_retrain("routine")
    asyncio.run(h.run_spawned())
    assert started == [("occupancy", 0.5)]


def test_the_budget_goes_offline_while_personalization_fails() -> None:
    class Pers:
        async def GetPrivacyBudget(self, request: Any, timeout: float) -> Any:
            return pers_pb.GetPrivacyBudgetResponse(
                budget=pers_pb.PrivacyBudget(
                    epsilon_spent=1.5, epsilon_limit=4.0, delta=1e-3, privacy_unit="day"
                )
            )

    avail = "roost/home-1/ha/personalization/availability"
    h = Harness(personalization=Pers())
    asyncio.run(h.c.poll_budget())
    assert h.pushed[avail] == (b"online", True)
    budget = h.state("privacy_budget")
    assert (budget["epsilon_remaining"], budget["scope"]) == (2.5, "household")
    assert (budget["privacy_unit"], budget["delta"]) == ("day", 1e-3)
    for code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.PERMISSION_DENIED):
        h.c.personalization = Failing(code)  # type: ignore[assignment]
        asyncio.run(h.c.poll_budget())
        assert h.pushed[avail] == (b"offline", True), code
    h = Harness()  # not deployed
    asyncio.run(h.c.poll_budget())
    assert h.pushed[avail] == (b"offline", True)


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND])
def test_a_failed_status_poll_shows_unhealthy_with_the_code_only(
    code: grpc.StatusCode, caplog: pytest.LogCaptureFixture
) -> None:
    h = Harness(Failing(code))
    with caplog.at_level(logging.DEBUG, logger="hub.homeassistant"):
        asyncio.run(h.c.poll_model("occupancy"))
    assert h.state("occupancy_status") == {
        "drift": "OFF",
        "health": "ON",
        "details": {"reason": code.name},
    }
    assert "inference service: GetModelStatus failed" in caplog.text
    assert SECRET not in caplog.text


def test_failed_commands_are_counted_and_logged_without_the_peers_details(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def counts() -> tuple[float, ...]:
        return (
            FEEDBACK.labels("failed")._value.get(),
            COMMANDS.labels("button", "failed")._value.get(),
            COMMANDS.labels("update", "failed")._value.get(),
        )

    down = Failing(grpc.StatusCode.UNAVAILABLE)
    refusing = Failing(grpc.StatusCode.FAILED_PRECONDITION)
    h = Harness(Failing(grpc.StatusCode.UNAVAILABLE), personalization=down, update=refusing)
    before = counts()

    async def go() -> None:
        await h.c.record_label("d1", "vacant")
        await h.c.train("occupancy")
        await h.c.rollback("occupancy")
        await h.c.install("occupancy")

    with caplog.at_level(logging.INFO, logger="hub.homeassistant"):
        asyncio.run(go())
    assert [a - b for a, b in zip(counts(), before, strict=True)] == [1, 2, 1]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "'was wrong' not recorded: personalization service: RecordLabel failed (UNAVAILABLE); "
        "try again later",
        "training occupancy not started: personalization service: StartTraining failed "
        "(UNAVAILABLE); try again later",
        "rolling back occupancy failed: update service: Rollback failed (FAILED_PRECONDITION)",
        "installing occupancy failed: update service: StartRollout failed (FAILED_PRECONDITION)",
    ]
    assert SECRET not in caplog.text
    # After a rollback or an install the update entity is polled again.
    assert refusing.calls == ["Rollback", "ListVersions", "StartRollout", "ListVersions"]
    # The polls failed too: the update entity still shows what inference reported.
    assert h.state("occupancy_update")["installed_version"] == "1.0.0"


def test_install_stages_the_newest_offered_version_first() -> None:
    calls: list[tuple[str, str]] = []

    class Update:
        async def CheckForUpdates(self, request: Any, timeout: float) -> Any:
            return upd_pb.CheckForUpdatesResponse(
                updates=[
                    upd_pb.AvailableUpdate(model=common_pb2.ModelRef(name="occupancy", version=v))
                    for v in ("1.2.0", "1.10.0", "1.9.9")
                ]
            )

        def __getattr__(self, method: str) -> Any:
            async def call(request: Any, timeout: float) -> Any:
                calls.append((method, getattr(request, "version", "")))
                raise RpcError(grpc.StatusCode.UNAVAILABLE)

            return call

    h = Harness(update=Update())

    async def go() -> None:
        await h.c.check_updates()
        await h.c.install("occupancy")

    asyncio.run(go())
    # Stage failed (down): no rollout was started.
    assert calls[0] == ("Stage", "1.10.0")
    assert ("StartRollout", "") not in calls
    assert h.state("occupancy_update")["latest_version"] == "1.10.0"


def test_owner_actions_are_relayed_with_an_owner_request_id() -> None:
    """The update service lets the hub take owner steps only as an owner's request:
    each Home Assistant action carries one id (Install's Stage and StartRollout share
    it), which the update service records in the audit log."""
    requests: list[tuple[str, str]] = []

    class Update:
        async def CheckForUpdates(self, request: Any, timeout: float) -> Any:
            return upd_pb.CheckForUpdatesResponse(
                updates=[
                    upd_pb.AvailableUpdate(
                        model=common_pb2.ModelRef(name="occupancy", version="1.2.0")
                    )
                ]
            )

        def __getattr__(self, method: str) -> Any:
            async def call(request: Any, timeout: float) -> Any:
                requests.append((method, getattr(request, "owner_request_id", "")))
                raise RpcError(grpc.StatusCode.UNAVAILABLE)

            return call

    h = Harness(update=Update())

    async def go() -> None:
        await h.c.check_updates()
        await h.c.rollback("occupancy")
        await h.c.install("occupancy")
        await h.c.install("occupancy")

    asyncio.run(go())
    owner_steps = [(m, rid) for m, rid in requests if m != "ListVersions"]
    assert [m for m, _ in owner_steps] == ["Rollback", "Stage", "Stage"]
    ids = [rid for _, rid in owner_steps]
    assert all(rid.startswith("ha-") and len(rid) == 19 for rid in ids)
    assert len(set(ids)) == 3  # one id per owner action
