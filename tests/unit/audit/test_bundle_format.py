"""The bundle format's shared parts: the export filters as written in a header."""

from __future__ import annotations

from services.audit.bundle_format import ExportFilters, is_int
from tests.support.audit_records import T0_US, decision


def test_export_filters_json() -> None:
    assert ExportFilters().is_empty()
    assert ExportFilters().to_json() == {}
    assert not ExportFilters(start_us=0).is_empty()
    f = ExportFilters(start_us=0, end_us=5, entity_id="e", action="a")
    assert f.to_json() == {"start_us": 0, "end_us": 5, "entity_id": "e", "action": "a"}
    assert ExportFilters.from_json(f.to_json()) == f


def test_export_filters_match_names_the_first_failing_filter() -> None:
    d = decision(3, entity_id="light.hall", model=("comfort", "2.0.0"), action="publish")
    t_us = T0_US + 3_000_000
    assert ExportFilters().matches(d) is None
    assert ExportFilters(start_us=t_us, end_us=t_us + 1, entity_id="light.hall").matches(d) is None
    assert ExportFilters(start_us=t_us + 1).matches(d) == "start_us"
    assert ExportFilters(end_us=t_us).matches(d) == "end_us"
    assert ExportFilters(entity_id="light.other", action="x").matches(d) == "entity_id"
    assert ExportFilters(model_name="occupancy").matches(d) == "model_name"
    assert ExportFilters(model_version="1.0.0").matches(d) == "model_version"
    assert ExportFilters(action="climate.set_temperature").matches(d) == "action"


def test_is_int_means_a_json_integer() -> None:
    assert is_int(0)
    assert is_int(-3)
    assert not is_int(True)
    assert not is_int(1.0)
    assert not is_int("1")
