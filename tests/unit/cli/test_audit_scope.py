"""`roost audit verify --filter` parsing and what verify says a bundle proves."""

from __future__ import annotations

import pytest

from cli.audit_scope import parse_filters, summary_lines
from cli.support import CliError
from services.audit.bundle_format import ExportFilters, LoggedRange
from services.audit.verify import BundleReport


def test_filters_parse_into_the_verifiers_filters() -> None:
    assert parse_filters([]) is None
    got = parse_filters(["entity=light.kitchen", "model=occupancy@1.2.0", "action=publish"])
    assert got == ExportFilters(
        entity_id="light.kitchen", model_name="occupancy", model_version="1.2.0", action="publish"
    )
    assert parse_filters(["model=occupancy"]) == ExportFilters(model_name="occupancy")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (["entity"], "expected KEY=VALUE"),
        (["room=kitchen"], "KEY one of entity, model, action"),
        (["entity="], "expected KEY=VALUE"),
        (["action=a", "action=b"], "given twice"),
    ],
)
def test_bad_filters_are_refused_precisely(spec: list[str], message: str) -> None:
    with pytest.raises(CliError, match=message):
        parse_filters(spec)


def test_a_long_filter_is_not_echoed_whole() -> None:
    with pytest.raises(CliError) as info:
        parse_filters(["x" * 10_000])
    assert len(str(info.value)) < 200


def _report(**changes: object) -> BundleReport:
    fields: dict[str, object] = {
        "origin": "roost.local/hub/h",
        "tree_size": 10,
        "root_hash": b"\0" * 32,
        "entries": 4,
        "redacted": 0,
        "complete": True,
        "consistency_checked": (),
        "first_index": 3,
        "last_index": 6,
    }
    fields.update(changes)
    return BundleReport(**fields)  # type: ignore[arg-type]


def test_verify_says_what_the_bundle_proves() -> None:
    whole = "\n".join(summary_lines(_report(covers_log=True), 1.0))
    assert "leaf indexes 3..6 (the complete log)" in whole
    ranged = "\n".join(summary_lines(_report(logged=LoggedRange(0, None)), 1.0))
    assert "logged_at from 1970-01-01T00:00:00.000000+00:00 until open" in ranged
    assert "every entry of the range: none was left out" in ranged
    served = "\n".join(summary_lines(_report(complete=False), 1.0))
    assert "proves membership only, NOT completeness" in served
