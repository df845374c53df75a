"""The soak's pure parts: the readings it sends, RSS verdicts, log counting, report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench import soak
from bench.soak import Counts, Run, Sample
from cli.household_stream import SENSOR_KINDS
from hub.topics import parse_reading_topic

ROW = [(kind, 20.0 + n) for n, kind in enumerate(SENSOR_KINDS)]
VALUES = ROW * 3
PROCS = ("hub", "inference", "audit")


def samples(rss_at: Any, seconds: int = 600, step: int = 10) -> list[Sample]:
    """Samples every ``step`` s with RSS ``rss_at(t)`` MB for every sampled process."""
    return [
        Sample(t, float(t), dict.fromkeys(PROCS, rss_at(t)), t * 300, t * 299)
        for t in range(0, seconds + 1, step)
    ]


def test_every_area_gets_whole_rows_in_reading_order() -> None:
    seen: dict[str, list[tuple[str, float]]] = {}
    for i in range(len(soak.AREAS) * len(SENSOR_KINDS) * 4):
        topic, body, key = soak.reading_message(i, VALUES)
        ref = parse_reading_topic(topic)
        assert ref is not None
        assert ref.area in soak.AREAS
        doc = json.loads(body)
        assert doc["id"] == key
        seen.setdefault(ref.area, []).append((ref.sensor_kind, doc["ts"]))
    assert set(seen) == set(soak.AREAS)
    for readings in seen.values():
        kinds = [k for k, _ in readings]
        # Whole rows: each area's window completes, so every reading can be decided.
        assert kinds == list(SENSOR_KINDS) * (len(kinds) // len(SENSOR_KINDS))
        times = [ts for _, ts in readings]
        assert times == sorted(set(times)), "reading times must rise within an area"


@given(st.integers(min_value=0, max_value=10**7), st.integers(min_value=1, max_value=10**6))
def test_reading_ids_are_unique_and_values_come_from_the_replay(i: int, gap: int) -> None:
    _, body, key = soak.reading_message(i, VALUES)
    _, _, other = soak.reading_message(i + gap, VALUES)
    assert key != other
    assert json.loads(body)["value"] == VALUES[i % len(VALUES)][1]


def test_a_flat_run_is_flat_and_the_warm_up_is_not_counted() -> None:
    # Start-up growth in the first minute (imports, arenas), then a little wobble.
    r = soak.rss_summary(samples(lambda t: 50.0 + min(t, 60) + (t // 10 % 2) * 1.5), "hub")
    assert r["warm_mb"] == 110.0
    assert abs(r["growth_mb"]) < 2
    assert abs(r["slope_mb_per_min"]) < 0.2
    assert r["flat"]


@pytest.mark.parametrize("bytes_per_reading", [80, 200, 1000])
def test_a_leak_per_reading_is_not_flat(bytes_per_reading: int) -> None:
    # 300 readings/s, each leaving ``bytes_per_reading`` behind (e.g. a remembered id).
    per_second = 300 * bytes_per_reading / 2**20
    r = soak.rss_summary(samples(lambda t: 100.0 + per_second * t), "audit")
    assert not r["flat"]
    assert r["slope_mb_per_min"] == pytest.approx(per_second * 60)
    assert r["growth_pct"] == pytest.approx(100 * r["growth_mb"] / r["warm_mb"])


def test_too_short_a_run_has_no_verdict() -> None:
    with pytest.raises(ValueError, match="two samples"):
        soak.rss_summary(samples(lambda t: 1.0, seconds=60), "hub")


def test_log_lines_are_counted_from_the_end_of_the_warm_up(tmp_path: Path) -> None:
    log = tmp_path / "hub.log"
    log.write_text("2026-01-01 10:00:00,001 INFO hub.app: connected to MQTT 127.0.0.1:1883\n")
    warm = log.stat().st_size
    flood = "".join(
        f"2026-01-01 10:0{n % 10}:00,{n:03d} WARNING aiomqtt: There are {n} pending publish calls\n"
        for n in range(250)
    )
    with log.open("a") as f:
        f.write(flood + "\n2026-01-01 10:09:59,999 ERROR hub.pipeline: audit refused 3 decisions\n")
    end = log.stat().st_size
    with log.open("a") as f:
        f.write("2026-01-01 10:10:00,000 INFO hub.app: hub stopped\n")  # after the steady part

    startup = soak.log_summary(soak.read_span(log, 0, warm))
    steady = soak.log_summary(soak.read_span(log, warm, end))
    assert startup["lines"] == 1
    assert steady["lines"] == 251  # blank lines are not log lines
    assert steady["top"][0] == ["WARNING aiomqtt: There are N pending publish calls", 250]
    assert steady["top"][1] == ["ERROR hub.pipeline: audit refused N decisions", 1]


def test_hub_counters_keep_the_hubs_nonzero_totals() -> None:
    text = (
        "# HELP roost_hub_readings_total Readings accepted by the hub.\n"
        "# TYPE roost_hub_readings_total counter\n"
        "roost_hub_readings_total 36000.0\n"
        "roost_hub_readings_created 1.7e9\n"
        "# HELP roost_hub_readings_dropped_total Readings dropped, by reason.\n"
        "# TYPE roost_hub_readings_dropped_total counter\n"
        'roost_hub_readings_dropped_total{reason="bad_json"} 0.0\n'
        'roost_hub_readings_dropped_total{reason="overloaded"} 12.0\n'
        "# HELP process_cpu_seconds_total CPU.\n"
        "# TYPE process_cpu_seconds_total counter\n"
        "process_cpu_seconds_total 80.0\n"
    )
    assert soak.hub_counters(text) == {
        "roost_hub_readings_total": 36000.0,
        "roost_hub_readings_dropped_total{reason=overloaded}": 12.0,
    }


def result(rss_at: Any, steady_lines: int) -> dict[str, Any]:
    run = Run(samples=samples(rss_at), elapsed=600.5, counts=Counts(180_000, 179_982))
    logs = {
        p: {
            "warmup": {"lines": 5, "top": [["INFO x: started", 5]]},
            "steady": {"lines": steady_lines if p == "hub" else 0, "top": []},
        }
        for p in soak.LOGGED
    }
    res = soak.summarize(run, logs, 300, {"roost_hub_readings_total": 180_000.0})
    res["machine"] = {
        "cpu": "cpu",
        "cores": 2,
        "memory_gib": 24,
        "platform": "linux",
        "python": "3.11",
        "broker": "mosquitto 2",
        "date": "2026-11-25",
    }
    res["load_avg_1min"] = {"start": 1.0, "end": 2.0}
    return res


def test_the_report_says_flat_and_quiet_with_the_numbers() -> None:
    res = result(lambda t: 120.0, steady_lines=3)
    assert res["flat_rss"]
    assert res["quiet_logs"]
    assert res["decisions_per_reading"] == pytest.approx(179_982 / 180_000)
    assert res["achieved_rate"] == pytest.approx(180_000 / 600.5)
    assert res["config"]["minutes"] == 10
    _, md = soak.render(res)
    assert "**NO**" not in md
    for text in (
        "# Soak",
        "## Log lines per process",
        "## Hub counters",
        "179,982 / 180,000",
        "120.0",
    ):
        assert text in md
    json.dumps(res)  # the JSON result is serializable as is


def test_the_report_flags_a_leak_and_a_flood() -> None:
    res = result(lambda t: 120.0 + t / 20, steady_lines=soak.LOG_LINE_LIMIT)
    assert not res["flat_rss"]
    assert not res["quiet_logs"]
    _, md = soak.render(res)
    assert md.count("**NO**") == len(PROCS) + 1


def test_the_plot_is_written(tmp_path: Path) -> None:
    png = tmp_path / "soak.png"
    soak.plot(result(lambda t: 120.0, steady_lines=0), png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv", [["--minutes", "1"], ["--rate", "0"]])
def test_arguments_that_leave_nothing_to_measure_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        soak.parse_args(argv)


def test_make_soak_runs_ten_minutes_at_300_per_second() -> None:
    args = soak.parse_args([])
    assert (args.minutes, args.rate) == (10.0, 300)
