"""The audit benchmark's start-up and witness sections, on a small log."""

from __future__ import annotations

from pathlib import Path

from bench import audit, audit_startup
from services.audit.store import AuditStore


def test_startup_measures_a_clean_log(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    store = AuditStore.open(db)
    store.append([audit.decision(i) for i in range(3_000)])
    store.close()
    res = audit_startup.startup(db, 1, audit.ORIGIN, tail_entries=1_000)
    assert res["entries"] == 3_000
    assert res["startup_s"]["median"] > 0
    assert res["full_pass_entries_per_s"] > 0
    rows, parts = audit_startup.report({"startup": res})
    assert rows[0][0] == "start-up checks at 3,000 entries, median (s)"
    assert "## 6. Start-up at 3,000 entries" in parts[0]


def test_the_witness_round_trip_uses_a_real_witness() -> None:
    res = audit_startup.witness_round_trip(3, audit.ORIGIN, audit.decision)
    assert res["rounds"] == 3
    assert res["p50"] > 0
