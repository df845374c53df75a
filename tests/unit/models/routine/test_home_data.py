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
            Interval(T0 + 660, T0 + 720, "use-toilet"),
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
        expected = [asleep] * 10 + [fill, toilet]
        expected[2], expected[5] = toilet, UNKNOWN
        assert y.tolist() == expected


def test_time_outside_the_annotated_span_is_left_out_not_idle() -> None:
    """House B's sensors run days before and after its annotations: those minutes are
    not evidence of "idle" (the person slept and went out) and must not be scored."""
    rec = HomeRecording(
        "houseX",
        (Interval(T0, T0 + 1, "front door"),),
        (Interval(T0 + 600, T0 + 650, "use-toilet"), Interval(T0 + 900, T0 + 1000, "go-to-bed")),
        ("front door",),
        ("go-to-bed", "use-toilet"),
        "",
    )
    m = HomeMappingFile(
        "houseX", "t", "idle", {}, {"go-to-bed": "asleep", "use-toilet": "toilet"}, {}
    )
    starts = T0 + 60.0 * np.arange(30)
    y = home_labels(rec, m, starts)
    toilet, asleep = CLASSES.index("toilet"), CLASSES.index("asleep")
    # Before the first annotation (slices 0-9) and after the last (17-29): left out.
    assert (y[:10] == UNKNOWN).all()
    assert (y[17:] == UNKNOWN).all()
    assert y[10] == toilet
    assert y[15] == asleep
    assert y[16] == asleep
    assert (y[11:15] == IDLE).all()
    # No annotations at all: nothing is scored.
    empty = HomeRecording("houseX", rec.sensors, (), rec.sensor_names, rec.activity_names, "")
    assert (home_labels(empty, m, starts) == UNKNOWN).all()


def test_house_b_unannotated_days_are_not_scored() -> None:
    if DATA_DIR is None:
        pytest.skip(MISSING)
    m = load_mapping("houseB")
    rec = load_home(DATA_DIR, "houseB", m)
    first = min(iv.start for iv in rec.activities)
    last = max(iv.end for iv in rec.activities)
    # The recording really does extend days beyond the annotations.
    assert first - rec.start > 2 * 86_400
    assert rec.end - last > 9 * 86_400
    starts = np.arange(rec.start // 60 * 60, rec.end, 60.0)
    y = home_labels(rec, m, starts)
    scored = starts[y != UNKNOWN]
    assert scored.min() >= first - 60
    assert scored.max() < last


def _near(rec: HomeRecording, sensors: set[str], ts: float, within: float = 180.0) -> bool:
    edges = np.sort([t for iv in rec.sensors if iv.name in sensors for t in (iv.start, iv.end)])
    i = int(np.searchsorted(edges, ts))
    return any(abs(edges[j] - ts) < within for j in (i - 1, i) if 0 <= j < len(edges))


@pytest.mark.parametrize("name", ["houseA", "houseB", "houseC"])
def test_mapped_rooms_fire_with_the_activities_they_host(name: str) -> None:
    """The installer mapping is checked against the data: a shower's start or end has
    a bathroom sensor firing within 3 min, a toilet visit a toilet-area sensor or a
    flush, leaving the house the entrance door. (House A's release names its two hall
    doors the wrong way round; mapped by name, only 9 of 23 showers pass.)"""
    if DATA_DIR is None:
        pytest.skip(MISSING)
    m = load_mapping(name)
    rec = load_home(DATA_DIR, name, m)
    refs = {n: r for n, r in m.sensors.items() if r is not None}
    bathroom = {n for n, r in refs.items() if r[0] == "bathroom" and r[1] != "toilet_flush"}
    toilet = {n for n, r in refs.items() if r[0] == "toilet" or r[1] == "toilet_flush"}
    entrance = {n for n, r in refs.items() if r == ("entrance", "door")}
    for activity, sensors, share in (
        ("take-shower", bathroom, 0.9),
        ("use-toilet", toilet, 0.8),
        ("leave-house", entrance, 0.95),
    ):
        ivs = [iv for iv in rec.activities if iv.name == activity]
        hits = sum(_near(rec, sensors, iv.start) or _near(rec, sensors, iv.end) for iv in ivs)
        assert hits >= share * len(ivs), (activity, hits, len(ivs))


def test_house_a_times_are_the_2008_files_local_wall_clock() -> None:
    """The homes README says "Unix seconds, UTC", but house A's firings are the 2008
    kasteren file's local wall-clock stamps read as if UTC (Amsterdam is UTC+1 then):
    the hour-of-day features need no time-zone shift for these homes."""
    if DATA_DIR is None:
        pytest.skip(MISSING)
    from models.routine.data import load_kasteren  # noqa: PLC0415

    rec = load_home(DATA_DIR, "houseA", load_mapping("houseA"))
    old = load_kasteren(DATA_DIR)
    # 1,227 of the release's 1,229 firings are in the 2008 file (1,319), same stamps.
    shared = {(i.start, i.end) for i in rec.sensors} & {(i.start, i.end) for i in old.sensors}
    assert len(shared) >= 0.9 * len(rec.sensors)
    shifted = {(i.start + 3600, i.end + 3600) for i in old.sensors}
    assert len({(i.start, i.end) for i in rec.sensors} & shifted) < 0.1 * len(rec.sensors)
    assert datetime.fromtimestamp(rec.sensors[0].start, UTC).hour == 0  # 00:20 local
