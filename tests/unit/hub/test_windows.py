"""Both window kinds behave as one Window: ready after enough readings, ignore the rest."""

from __future__ import annotations

from datetime import UTC

import pytest

from hub.windows import AreaWindow, HomeEventWindow, OutOfOrder, Window
from models.features import FeatureSpec, SensorFeature
from models.routine.spec import INPUT_SHAPE

SPEC = FeatureSpec(
    spec_id="test/v1",
    sensors=(
        SensorFeature("temperature", "temperature", "degC"),
        SensorFeature("co2", "carbon_dioxide", "ppm"),
    ),
    time_of_day=False,
)
T0 = 1_700_000_000.0


def test_area_window_is_ready_once_every_kind_was_seen() -> None:
    window: Window = AreaWindow(SPEC, UTC)
    assert window.feature_names == ("temperature", "co2")
    assert not window.update("office", "temperature", 21.0, T0)
    assert not window.update("office", "door", 1.0, T0)  # not an input: ignored
    assert window.update("office", "carbon_dioxide", 800.0, T0 + 1)
    assert tuple(window.tensor(T0 + 1)) == (21.0, 800.0)


def test_home_window_ignores_readings_outside_its_vocabulary() -> None:
    window: Window = HomeEventWindow(UTC)
    assert window.feature_names == HomeEventWindow.feature_names
    assert "door" in HomeEventWindow.kinds
    assert not window.update("garage", "door", 1.0, T0)  # area outside the vocabulary
    assert not window.update("kitchen", "fridge", 1.0, T0, source="t/fridge")
    assert window.update("entrance", "door", 1.0, T0 + 3600, source="t/door")  # warmed up
    assert window.tensor(T0 + 3600).shape == INPUT_SHAPE


def test_home_window_refuses_events_out_of_order() -> None:
    window = HomeEventWindow(UTC)
    window.update("kitchen", "fridge", 1.0, T0)
    with pytest.raises(OutOfOrder):
        window.update("kitchen", "cupboard", 1.0, T0 - 10)
