"""The topic schema: names are bounded snake_case, matched whole."""

from __future__ import annotations

import pytest

from hub.topics import (
    MAX_NAME_CHARS,
    ReadingTopic,
    parse_reading_topic,
    parse_statestream_topic,
    reading_segments,
    valid_segment,
)


@pytest.mark.parametrize("name", ["office", "living_room_2", "a" * MAX_NAME_CHARS])
def test_valid_segments(name: str) -> None:
    assert valid_segment(name)


@pytest.mark.parametrize(
    "name",
    ["", "Office", "office\n", "living-room", "a" * (MAX_NAME_CHARS + 1), "a" * 100_000, "é"],
)
def test_invalid_segments(name: str) -> None:
    # "office\n" passed the old check: `$` also matches before a trailing newline.
    assert not valid_segment(name)


def test_reading_topics() -> None:
    assert parse_reading_topic("roost/readings/office/temperature") == ReadingTopic(
        "office", "temperature"
    )
    assert parse_reading_topic("roost/readings/office\n/temperature") is None
    assert parse_reading_topic("roost/readings/" + "a" * 100_000 + "/temperature") is None
    assert reading_segments("roost/readings/Office/x") == ("Office", "x")
    for topic in ("roost/readings/a/b/c", "roost/readings/a", "other/readings/a/b", ""):
        assert reading_segments(topic) is None


def test_statestream_topics() -> None:
    assert parse_statestream_topic("ha", "ha/sensor/office_t/state") == "sensor.office_t"
    assert parse_statestream_topic("ha", "ha/sensor/office_t/attr/state") is None
    assert parse_statestream_topic("ha", "ha/sensor/office_t/brightness") is None
