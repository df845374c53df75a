"""Integration fixtures: a real stack (mosquitto + service processes + hub) per module."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.stack import Stack, StackError, find_mosquitto
from services.kit.auth import Role
from tests.support.home_assistant import HomeAssistant, start_home_assistant


def require_mosquitto() -> None:
    try:
        find_mosquitto()
    except StackError as e:
        if os.environ.get("CI"):
            pytest.fail(f"CI must have mosquitto (make setup installs it): {e}")
        pytest.skip(f"{e}")


def start_stack(home: Path, **hub_env: str) -> Stack:
    require_mosquitto()
    stack = Stack(home, hub_id="itest")
    try:
        stack.start_broker()
        stack.start_service(Role.AUDIT)
        stack.start_service(Role.INFERENCE)
        stack.start_hub(hub_env)
    except BaseException:
        stack.stop()
        raise
    return stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    st = start_stack(tmp_path_factory.mktemp("stack"))
    yield st
    st.stop()


# ---------------------------------------------------------------- Home Assistant


@pytest.fixture(scope="module")
def ha_env(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, HomeAssistant]]:
    """A real Home Assistant and its own fresh mosquitto, per module: ``(broker stack, ha)``.

    A module may set ``HA_OPTIONS`` (keyword arguments of ``HomeAssistant``: extra
    entities, areas, statestream filter). Skips without mosquitto or the HA venv (fails in
    CI). Use ``ha.broker_port`` for MQTT clients; the stack can stop and restart the broker.
    """
    options = getattr(request.module, "HA_OPTIONS", {})
    stack, ha = start_home_assistant(tmp_path_factory.mktemp("home_assistant"), **options)
    try:
        yield stack, ha
    finally:
        ha.stop()
        stack.stop()


@pytest.fixture(scope="module")
def ha(ha_env: tuple[Stack, HomeAssistant]) -> HomeAssistant:
    """The module's real Home Assistant (see ``ha_env``)."""
    return ha_env[1]
