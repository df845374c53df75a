"""``roost status`` reads each model's decision health from the hub's metrics."""

from __future__ import annotations

from prometheus_client import REGISTRY, generate_latest

from cli.status import Check, model_checks, render, samples
from hub.health import DecisionHealth, Peer


def test_each_model_shows_whether_it_is_deciding_and_why_not() -> None:
    now = 1_700_000_000.0
    h = DecisionHealth(["st_occupancy", "st_comfort"], clock=lambda: now)
    h.peer_failed(Peer.AUDIT)
    h.queued("st_occupancy", 2400)
    text = generate_latest(REGISTRY).decode()
    checks = {c.name: c for c in model_checks(text, now + 12) if c.name.startswith("hub/st_")}
    assert checks == {
        "hub/st_comfort": Check(
            "hub/st_comfort", False, "audit unavailable for 12 s, 0 readings queued"
        ),
        "hub/st_occupancy": Check(
            "hub/st_occupancy", False, "audit unavailable for 12 s, 2,400 readings queued"
        ),
    }
    h.peer_ok(Peer.AUDIT)
    text = generate_latest(REGISTRY).decode()
    checks = {c.name: c for c in model_checks(text, now + 13) if c.name.startswith("hub/st_")}
    assert checks["hub/st_comfort"] == Check("hub/st_comfort", True, "deciding")
    assert checks["hub/st_occupancy"].ok
    assert "FAIL" not in render(list(checks.values()))


def test_no_model_metrics_no_model_lines() -> None:
    assert model_checks("roost_hub_mqtt_connected 1.0\n", 0.0) == []


def test_samples_parses_labels() -> None:
    text = 'x_total{a="1",b="two"} 3.0\nx_total 4.0\ny{a="1"} 5.0\n'
    assert samples(text, "x_total") == [({"a": "1", "b": "two"}, 3.0)]
