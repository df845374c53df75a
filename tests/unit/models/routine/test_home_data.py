"""The five real homes' installer mappings (``models/routine/homes/*.toml``) and their
loader (``models.routine.home_data``): every sensor and label is mapped or explicitly
ignored, and a mapping that lacks one, or names something outside the vocabulary, fails."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from models.routine.data import CLASSES, IDLE, Interval
from models.routine.home_data import (
    HOMES,
    INSTALLER_AREAS,
    INSTALLER_KINDS,
    MAPPINGS_DIR,
    UNKNOWN,
    HomeMappingFile,
    HomeRecording,
    as_home,
    home_labels,
    load_home,
    load_mapping,
    served_refs,
    unmapped,
)
from models.routine.spec import AREAS, KINDS
from tests.support.shared_data import DATA_DIR, MISSING

T0 = datetime(2024, 1, 1, 0, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize("name", HOMES)
def test_mapping_files_parse_into_the_vocabulary(name: str) -> None:
    m = load_mapping(name)
    assert m.name == name
    for ref in m.sensors.values():
        if ref is not None:
            assert ref[0] in INSTALLER_AREAS
            assert ref[1] in INSTALLER_KINDS
    assert set(m.activities.values()) <= {*CLASSES, "unknown"}


@pytest.mark.parametrize("name", HOMES)
def test_every_sensor_and_label_of_each_home_is_mapped_or_ignored(name: str) -> None:
    if DATA_DIR is None:
        pytest.skip(MISSING)
    m = load_mapping(name)
    rec = load_home(DATA_DIR, name, m)
    assert unmapped(rec, m) == []
    # Every sensor id in the data resolved to a mapped name (or was ignored on load).
    assert {iv.name for iv in rec.sensors} <= set(m.sensors)
    assert {iv.name for iv in rec.activities} <= set(m.activities)
    # Nothing an installer needs is lost: the served vocabulary keeps the presence cues.
    kinds = {ref.kind for ref in served_refs(m).values()}
    assert "door" in kinds or "motion" in kinds


def test_houses_a_to_c_annotate_every_class() -> None:
    for name in ("houseA", "houseB", "houseC"):
        m = load_mapping(name)
        assert m.unannotated == "idle"
        assert set(CLASSES) - {"idle"} <= set(m.activities.values())


def test_a_sensor_outside_the_vocabulary_is_an_error(tmp_path: Path) -> None:
    text = (MAPPINGS_DIR / "houseA.toml").read_text()
    (tmp_path / "houseA.toml").write_text(
        text.replace('"Fridge" = ["kitchen", "fridge"]', '"Fridge" = ["kitchen", "icebox"]')
    )
    with pytest.raises(ValueError, match="Fridge"):
        load_mapping("houseA", tmp_path)


def test_an_unknown_class_is_an_error(tmp_path: Path) -> None:
    text = (MAPPINGS_DIR / "houseA.toml").read_text()
    (tmp_path / "houseA.toml").write_text(text.replace('= "shower"', '= "bath"'))
    with pytest.raises(ValueError, match="take-shower"):
        load_mapping("houseA", tmp_path)


def _recording(tmp_path: Path, sensors: str, names: str) -> Path:
    folder = tmp_path / "homes"
    folder.mkdir()
    (folder / "houseX.sensors").write_text(sensors)
    (folder / "houseX.sensor_names").write_text(names)
    (folder / "houseX.activities").write_text("100\t60\t1\n")
    (folder / "houseX.activity_names").write_text("1\tleave-house\r\n")
    return tmp_path


def _mapping(sensor_ids: dict[int, str] | None = None) -> HomeMappingFile:
    return HomeMappingFile(
        "houseX",
        "test",
        "idle",
        {"front door": ("entrance", "door"), "bed mat": ("bedroom", "bed")},
        {"leave-house": "away"},
        sensor_ids or {},
    )


def test_an_id_the_names_file_lacks_needs_an_explicit_entry(tmp_path: Path) -> None:
    data = _recording(tmp_path, "10\t5\t1\n20\t5\t4\n", "1\tfront door\r\n7\tbed mat\r\n")
    with pytest.raises(ValueError, match="id 4"):
        load_home(data, "houseX", _mapping())
    rec = load_home(data, "houseX", _mapping({4: "bed mat"}))
    assert [iv.name for iv in rec.sensors] == ["front door", "bed mat"]
    ignored = load_home(data, "houseX", _mapping({4: "ignore"}))
    assert [iv.name for iv in ignored.sensors] == ["front door"]


def test_a_sensor_missing_from_the_mapping_is_an_error(tmp_path: Path) -> None:
    data = _recording(tmp_path, "10\t5\t1\n20\t5\t2\n", "1\tfront door\n2\tcouch\n")
    m = _mapping()
    rec = load_home(data, "houseX", m)
    assert unmapped(rec, m) == ["sensor 'couch'"]
    with pytest.raises(ValueError, match="couch"):
        as_home(rec, m)


def test_kinds_the_served_vocabulary_lacks_are_left_out_like_the_hub_does() -> None:
    refs = served_refs(_mapping())
    assert list(refs) == ["front door"]
    assert all(r.area in AREAS and r.kind in KINDS for r in refs.values())


def test_labels_shortest_wins_and_unannotated_time_follows_the_mapping() -> None:
    rec = HomeRecording(
        "houseX",
        (),
        (
            Interval(T0, T0 + 600, "go-to-bed"),
            Interval(T0 + 120, T0 + 170, "use-toilet"),
            Interval(T0 + 300, T0 + 350, "Lawnwork"),
        ),
        (),
        ("go-to-bed", "use-toilet", "Lawnwork"),
        "",
    )
    starts = T0 + 60.0 * np.arange(12)
    acts = {"go-to-bed": "asleep", "use-toilet": "toilet", "Lawnwork": "unknown"}
    for unannotated, fill in (("idle", IDLE), ("unknown", UNKNOWN)):
        m = HomeMappingFile("houseX", "t", unannotated, {}, acts, {})
        y = home_labels(rec, m, starts)
        asleep, toilet = CLASSES.index("asleep"), CLASSES.index("toilet")
        # Slice i is [T0 + 60 i, T0 + 60 (i + 1)); go-to-bed covers slices 0-9.
        expected = [asleep] * 10 + [fill] * 2
        expected[2], expected[5] = toilet, UNKNOWN
        assert y.tolist() == expected
