"""The homeowner's settings: persisted, invalid fields keep their defaults."""

from __future__ import annotations

import json
from pathlib import Path

from hub.homeassistant.settings import Settings, parse_number


def test_settings_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "ha_settings.json"
    Settings("local-only", 0.7, 0.5, {"routine_home": "asleep"}).save(path)
    assert Settings.load(path, Settings()) == Settings(
        "local-only", 0.7, 0.5, {"routine_home": "asleep"}
    )


def test_missing_or_invalid_settings_fall_back_to_the_defaults(tmp_path: Path) -> None:
    defaults = Settings(occupancy_threshold=0.6)
    path = tmp_path / "ha_settings.json"
    assert Settings.load(path, defaults) is defaults
    path.write_text("{not json")
    assert Settings.load(path, defaults) is defaults
    path.write_text(json.dumps({"learning_mode": "turbo", "drift_psi_alert": "high", "choices": 3}))
    assert Settings.load(path, defaults) == defaults


def test_training_allowed_unless_paused() -> None:
    assert Settings().training_allowed()
    assert Settings(learning_mode="local-only").training_allowed()
    assert not Settings(learning_mode="paused").training_allowed()


def test_parse_number() -> None:
    assert parse_number("0.8", 0.05, 0.95) == 0.8
    assert parse_number("5", 0.05, 0.95) is None
    assert parse_number("abc", 0.05, 0.95) is None
    assert parse_number("1e-1", 0.05, 0.95) is None
