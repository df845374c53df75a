"""Integration fixtures: a real stack (mosquitto + service processes + hub) per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cli.stack import Stack
from tests.support.home_assistant import HomeAssistant, start_home_assistant
from tests.support.stacks import start_stack


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
