"""Fixtures of the inference tests: started :class:`InferenceApp` s, closed afterwards."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.inference.app import InferenceApp
from services.inference.config import InferenceConfig
from tests.support.rollouts import StartApp


@pytest.fixture
async def start_app() -> AsyncIterator[StartApp]:
    """Starts an InferenceApp (models loaded, registry followed); closes it after the test."""
    apps: list[InferenceApp] = []

    async def start(cfg: InferenceConfig) -> InferenceApp:
        app = InferenceApp(cfg)
        apps.append(app)
        await app.start()
        return app

    yield start
    for app in apps:
        await app.close()
