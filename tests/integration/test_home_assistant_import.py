"""``roost ha check`` and ``roost ha import`` against a REAL Home Assistant (2025.4.4).

HA gets template sensors with a device_class in the areas Kitchen (all four occupancy
inputs) and Living Room (temperature only), and an ``input_boolean`` the homeowner uses
as ground truth for presence. The test drives real state changes through HA's REST API
for ~20 s (HA's recorder commits every change at once: ``commit_interval: 0`` in the
harness), then:

* ``roost ha check`` reads HA's registries (websocket) and prints, per model and area,
  the mapped entities and the UNMAPPED inputs;
* ``roost ha import`` reads HA's recorded history (REST), resamples it onto occupancy
  windows every 0.5 s, labels them from the input_boolean and sends them to the REAL
  personalization service (``AddExamples``, ``LABEL_SOURCE_IMPORT``); the service's
  metrics and store show them, with the features of the home's time zone (not HA's).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from cli.main import main
from cli.stack import Stack
from models.features import time_of_day_features
from services.kit.auth import Role
from tests.support.examples_store import stored_examples
from tests.support.ha_entities import KINDS, room_sensors
from tests.support.home_assistant import HomeAssistant
from tests.support.metrics import metric

pytestmark = [pytest.mark.integration, pytest.mark.home_assistant, pytest.mark.timeout(600)]

# kind -> (unit, min, max)
VACANT = {"temperature": 20.5, "humidity": 31.0, "illuminance": 2.0, "carbon_dioxide": 440.0}
OCCUPIED = {"temperature": 22.5, "humidity": 36.0, "illuminance": 510.0, "carbon_dioxide": 910.0}
LABEL_ENTITY = "input_boolean.kitchen_presence"
HOME_TZ = "Asia/Kolkata"  # UTC+05:30 (HA runs in UTC): a wrong zone shows in hour_sin/cos
STEP = 0.5  # seconds between import windows
PHASE = 2.5  # seconds per occupied/vacant phase
PHASES = 8


def _ha_options() -> dict[str, Any]:
    numbers, sensors, areas = room_sensors({"kitchen": "Kitchen"}, KINDS, "roostimport")
    more = room_sensors(
        {"living_room": "Living Room"}, {"temperature": KINDS["temperature"]}, "roostimport"
    )
    numbers |= more[0]
    sensors += more[1]
    areas |= more[2]
    areas[LABEL_ENTITY] = "Kitchen"
    areas["binary_sensor.kitchen_motion"] = "Kitchen"
    return {
        "extra_config": {
            "input_number": numbers,
            "input_boolean": {"kitchen_presence": {"name": "Kitchen presence"}},
            "template": [
                {
                    "sensor": sensors,
                    "binary_sensor": [
                        {
                            "name": "Kitchen motion",
                            "unique_id": "roostimport_kitchen_motion",
                            "device_class": "motion",
                            "state": f"{{{{ is_state('{LABEL_ENTITY}', 'on') }}}}",
                        }
                    ],
                }
            ],
        },
        "areas": areas,
    }


HA_OPTIONS = _ha_options()


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Audit, update (writes the model registry) and the REAL personalization service."""
    stack = Stack(tmp_path_factory.mktemp("import") / "home", hub_id="haimport")
    try:
        stack.start_service(Role.AUDIT)
        stack.start_service(Role.INFERENCE)
        stack.start_service(Role.UPDATE)
        stack.start_service(Role.PERSONALIZATION, timeout=60)
        yield stack
    finally:
        stack.stop()


@dataclass(frozen=True)
class History:
    """What the test did to HA: when, and the presence it set (wall-clock epoch)."""

    started: float
    ended: float
    switches: list[tuple[float, float, bool]]  # (began, done, occupied) of each switch


def set_kitchen(ha: HomeAssistant, values: dict[str, float], occupied: bool) -> None:
    for kind, value in values.items():
        ha.call_service(
            "input_number",
            "set_value",
            {"entity_id": f"input_number.kitchen_{kind}_raw", "value": value},
        )
    ha.call_service(
        "input_boolean", "turn_on" if occupied else "turn_off", {"entity_id": LABEL_ENTITY}
    )


@pytest.fixture(scope="module")
def history(ha: HomeAssistant) -> History:
    """~20 s of real history: alternating vacant/occupied phases; within a phase the
    temperature drifts every 0.25 s, so HA records many small changes too."""
    started = time.time()
    switches: list[tuple[float, float, bool]] = []
    for phase in range(PHASES):
        occupied = phase % 2 == 1
        base = OCCUPIED if occupied else VACANT
        began = time.time()
        set_kitchen(ha, base, occupied)
        switches.append((began, time.time(), occupied))
        phase_end = began + PHASE
        drift = 0.0
        while time.time() < phase_end:
            drift += 0.1
            ha.call_service(
                "input_number",
                "set_value",
                {
                    "entity_id": "input_number.kitchen_temperature_raw",
                    "value": round(base["temperature"] + drift, 1),
                },
            )
            time.sleep(0.25)  # the drift's pace: this IS the history being recorded
    living = ha.state("sensor.living_room_temperature")
    assert living is not None
    assert living["state"] == "6.0"
    return History(started, time.time(), switches)


@pytest.fixture
def hub_env(
    ha: HomeAssistant, services: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hub configuration the CLI reads (like the hub: ``ROOST_HUB_*``)."""
    token = tmp_path / "ha-token"
    token.write_text(ha.token)
    monkeypatch.delenv("ROOST_CONFIG", raising=False)
    for key, value in {
        "HA_URL": ha.url,
        "HA_TOKEN_FILE": str(token),
        "HA_MAPPING": "auto",
        "TIMEZONE": HOME_TZ,
        "CERTS_DIR": str(services.certs_dir),
        "PERSONALIZATION_TARGET": f"127.0.0.1:{services.port_of(Role.PERSONALIZATION)}",
    }.items():
        monkeypatch.setenv(f"ROOST_HUB_{key}", value)


def examples_metric(stack: Stack) -> float:
    return metric(stack, "roost_personalization_examples", "personalization", model="occupancy")


def test_check_prints_mapped_and_unmapped_inputs_by_area(
    ha: HomeAssistant, hub_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ha", "check"]) == 0
    out = capsys.readouterr().out
    sections = {
        m.group(1): m.group(2) for m in re.finditer(r"^(\w+ / \w+)\n((?:  .*\n?)+)", out, re.M)
    }

    def rows(section: str) -> dict[str, str]:
        found = re.findall(r"^  (\w+)\s+(?:<- (.+)|(UNMAPPED))$", sections[section], re.M)
        return {kind: entities or unmapped for kind, entities, unmapped in found}

    assert out.startswith("mapping: auto (6 entities)"), out
    assert rows("occupancy / kitchen") == {
        "carbon_dioxide": "sensor.kitchen_carbon_dioxide",
        "humidity": "sensor.kitchen_humidity",
        "illuminance": "sensor.kitchen_illuminance",
        "temperature": "sensor.kitchen_temperature",
    }
    assert rows("occupancy / living_room") == {
        "carbon_dioxide": "UNMAPPED",
        "humidity": "UNMAPPED",
        "illuminance": "UNMAPPED",
        "temperature": "sensor.living_room_temperature",
    }
    routine = rows("routine / home")
    assert routine["motion"] == "binary_sensor.kitchen_motion"  # device_class motion
    assert routine["door"] == "UNMAPPED"
    unmapped = out.count("UNMAPPED")
    assert f"\n{unmapped} unmapped inputs" in out
    # The registry read closes its websocket normally (homeassistant-api's client sent
    # close code 0, which Home Assistant logs on every read).
    assert "Invalid close code" not in ha.log_path.read_text()


def test_import_sends_labelled_history_to_personalization(
    ha: HomeAssistant,
    history: History,
    services: Stack,
    hub_env: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # From just before the first phase (the state then: HA's start-time state).
    days = f"{(time.time() - history.started + 1.0) / 86400:.8f}"
    base = [
        "ha",
        "import",
        "--model",
        "occupancy",
        "--area",
        "kitchen",
        "--label-entity",
        LABEL_ENTITY,
        "--days",
        days,
        "--step",
        str(STEP),
    ]
    assert main([*base, "--dry-run"]) == 0
    out = capsys.readouterr().out
    windows = int(re.search(r"^(\d+) labelled windows", out, re.M).group(1))  # type: ignore[union-attr]
    span = history.ended - history.started
    assert span / STEP - 4 <= windows <= (span + 3) / STEP + 4, (windows, span)
    assert examples_metric(services) == 0  # a dry run sends nothing

    assert main(base) == 0
    out = capsys.readouterr().out
    m = re.search(r"^(\d+) labelled windows.*\nadded (\d+) examples; (\d+) in the local", out, re.M)
    assert m, out
    sent, added, total = (int(g) for g in m.groups())
    assert abs(sent - windows) <= 2  # the same span, a moment later
    assert added == sent == total
    # The REAL service has them: its metric and its store.
    assert examples_metric(services) == total
    rows = stored_examples(services)
    assert len(rows) == total
    assert {row.source for row in rows} == {"import"}
    labels = [row.label for row in rows]
    assert labels.count("occupied") >= PHASES // 2 * (PHASE / STEP - 2)
    assert labels.count("vacant") >= PHASES // 2 * (PHASE / STEP - 2)

    # Resampled from what HA recorded: each window's label agrees with the phase the test
    # was in at that time, except right at a switch (HA's clock vs ours, call latency);
    # and its inputs are that phase's readings.
    def phase_at(t: float) -> bool | None:
        current = None
        for began, done, occupied in history.switches:
            if began - 0.1 <= t <= done + 0.25:
                return None  # during a switch: some inputs changed, some not yet
            if done <= t:
                current = occupied
        return current

    checked = 0
    for row in rows:
        label, observed, x = row.label, row.observed_at, row.features()
        expected = phase_at(observed)
        if expected is None:
            continue
        checked += 1
        assert label == ("occupied" if expected else "vacant"), (observed, label)
        phase = OCCUPIED if expected else VACANT
        assert x.shape == (6,)
        assert x[1:4].tolist() == pytest.approx(
            [phase["humidity"], phase["illuminance"], phase["carbon_dioxide"]]
        )
        assert phase["temperature"] <= x[0] <= phase["temperature"] + 1.5
        # Time of day in the home's zone (Asia/Kolkata), though HA keeps UTC.
        assert x[4:].tolist() == pytest.approx(
            list(time_of_day_features(observed, ZoneInfo(HOME_TZ))), abs=1e-5
        )
        assert abs(observed / STEP - round(observed / STEP)) < 1e-6  # on the step grid
    assert checked >= 0.7 * len(rows)

    # Importing the same range again adds nothing it already has (the same grid).
    assert main(base) == 0
    again = capsys.readouterr().out
    m2 = re.search(r"^added (\d+) examples; (\d+) in the local", again, re.M)
    assert m2, again
    new = int(m2.group(1))
    assert int(m2.group(2)) == total + new
    # Only windows after the first run's: the stored ones are not sent again.
    newest = max(row.observed_at for row in rows)
    assert all(row.observed_at > newest for row in stored_examples(services)[total:])
    print(
        f"roost ha import: {sent} windows ({labels.count('occupied')} occupied,"
        f" {checked} checked against the phases); re-import added {new}"
    )
