"""Fixtures of the Home Assistant tests: a bridge of hub ``home-1`` with fake services."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hub.homeassistant.bridge import HaBridge
from hub.homeassistant.entities import ModelInfo
from hub.homeassistant.settings import Settings
from hub.policy import ActionPolicy


class FakeInference:
    """An inference stub the bridge holds but the test does not call."""


@pytest.fixture
def make_bridge(tmp_path: Path) -> Callable[..., HaBridge]:
    """A bridge for an occupancy model (1.0.0) and the routine model (away/asleep/idle);
    no personalization or update service, no settle delay, settings in ``tmp_path``;
    keyword arguments go to ``HaBridge``."""

    def make(**kwargs: Any) -> HaBridge:
        return HaBridge(
            hub_id="home-1",
            prefix="homeassistant",
            models=[
                ModelInfo("occupancy", ("vacant", "occupied"), "1.0.0"),
                ModelInfo("routine", ("away", "asleep", "idle")),
            ],
            settings=Settings(),
            settings_path=tmp_path / "ha_settings.json",
            policy=ActionPolicy(),
            inference=FakeInference(),  # type: ignore[arg-type]
            **({"settle_seconds": 0.0} | kwargs),
        )

    return make
