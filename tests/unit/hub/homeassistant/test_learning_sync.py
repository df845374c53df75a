"""The hub sends the homeowner's learning mode to the personalization service that
enforces it: right after Home Assistant changes it, at every poll (so at start and after
the service was away), never an older mode after a newer one; and the Fleet learning
sensor says the homeowner turned rounds off. A stand-in service here; the real one:
tests/integration/test_learning_mode.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from hub.homeassistant.bridge import HaBridge
from hub.homeassistant.fleet_entities import FleetStatus
from hub.homeassistant.learning_sync import MODES, LearningModeSync
from hub.homeassistant.settings import LEARNING_MODES, Settings
from roost.personalization.v1 import personalization_service_pb2 as pers_pb

CMD = "roost/home-1/ha/cmd"
FLEET = "roost/home-1/ha/state/fleet"


class FakePersonalization:
    """Records the modes it is sent; ``down`` makes every call UNAVAILABLE; ``gate``
    (when set) holds each SetLearningMode until it is set."""

    def __init__(self) -> None:
        self.modes: list[int] = []
        self.down = False
        self.gate: asyncio.Event | None = None

    async def SetLearningMode(self, request: Any, timeout: float) -> Any:
        if self.down:
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata()
            )
        if self.gate is not None:
            await self.gate.wait()
        self.modes.append(request.mode)
        return pers_pb.SetLearningModeResponse(mode=request.mode)

    async def GetPrivacyBudget(self, request: Any, timeout: float) -> Any:
        return pers_pb.GetPrivacyBudgetResponse(budget=pers_pb.PrivacyBudget(epsilon_limit=4.0))


def test_every_home_assistant_option_has_a_service_mode() -> None:
    assert set(MODES) == set(LEARNING_MODES)
    assert pers_pb.LEARNING_MODE_UNSPECIFIED not in MODES.values()


def test_a_failed_send_is_retried_at_the_next_sync() -> None:
    pers = FakePersonalization()
    settings = Settings(learning_mode="local-only")
    sync = LearningModeSync(settings, pers)  # type: ignore[arg-type]

    async def go() -> None:
        pers.down = True
        assert await sync.sync() is False
        assert sync.acknowledged is None
        pers.down = False  # the service is back (restarted, reinstalled...)
        assert await sync.sync() is True
        assert await sync.sync() is True  # and again at each poll: idempotent

    asyncio.run(go())
    assert pers.modes == [pers_pb.LEARNING_MODE_LOCAL_ONLY] * 2
    assert sync.acknowledged == "local-only"
    assert asyncio.run(LearningModeSync(settings, None).sync()) is False  # not deployed


def test_an_older_mode_never_overtakes_a_newer_one() -> None:
    """A poll's send is under way when the homeowner changes the mode: the change is the
    last mode the service gets."""
    pers = FakePersonalization()
    settings = Settings(learning_mode="learning")
    sync = LearningModeSync(settings, pers)  # type: ignore[arg-type]

    async def go() -> None:
        pers.gate = asyncio.Event()
        poll = asyncio.create_task(sync.sync())
        await asyncio.sleep(0)  # the poll's send is waiting in the service
        settings.learning_mode = "local-only"
        change = asyncio.create_task(sync.sync())
        await asyncio.sleep(0)
        pers.gate.set()
        await asyncio.gather(poll, change)

    asyncio.run(go())
    assert pers.modes[-1] == pers_pb.LEARNING_MODE_LOCAL_ONLY
    assert sync.acknowledged == "local-only"


@pytest.mark.parametrize("mode", ["local-only", "paused"])
def test_the_command_is_sent_at_once_and_the_fleet_sensor_says_off(
    make_bridge: Callable[..., HaBridge], mode: str
) -> None:
    pers = FakePersonalization()
    b = make_bridge(personalization=pers, fleet=FleetStatus(enabled=True, audit=None))

    async def go() -> None:
        assert b.handle(f"{CMD}/learning_mode", mode.encode())
        await b.idle()

    asyncio.run(go())
    assert pers.modes == [MODES[mode]]
    doc = json.loads(b._outbox[FLEET][0])
    assert doc["state"] == f"off: {mode} (set in Home Assistant)"
    assert doc["why"] == f"the homeowner set learning to {mode}: no fleet rounds"

    async def back() -> None:
        assert b.handle(f"{CMD}/learning_mode", b"learning")
        await b.idle()

    asyncio.run(back())
    assert pers.modes[-1] == pers_pb.LEARNING_MODE_LEARNING
    assert json.loads(b._outbox[FLEET][0])["state"] == "on"


def test_each_poll_sends_the_saved_mode_first(make_bridge: Callable[..., HaBridge]) -> None:
    """At hub start the coordinator's first poll sends the mode the settings file holds."""
    pers = FakePersonalization()
    b = make_bridge(personalization=pers, fleet=FleetStatus(enabled=True, audit=None))
    b.settings.learning_mode = "paused"  # as loaded from ha_settings.json
    b.coordinator.models = {}  # no model status to poll here
    asyncio.run(b.coordinator.poll_once())
    assert pers.modes == [pers_pb.LEARNING_MODE_PAUSED]
    assert json.loads(b._outbox[FLEET][0])["state"] == "off: paused (set in Home Assistant)"


def test_fleet_off_in_the_config_stays_plain_off(make_bridge: Callable[..., HaBridge]) -> None:
    pers = FakePersonalization()
    b = make_bridge(personalization=pers, fleet=FleetStatus(enabled=False, audit=None))
    b.settings.learning_mode = "local-only"
    b.coordinator.models = {}
    asyncio.run(b.coordinator.poll_once())
    assert json.loads(b._outbox[FLEET][0])["state"] == "off"
    assert pers.modes == [pers_pb.LEARNING_MODE_LOCAL_ONLY]  # enforced all the same
