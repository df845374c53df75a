"""The audit benchmark's pure parts: decisions, batches, raw baseline, cache, report."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

from bench import audit, audit_report
from roost.audit.v1 import audit_service_pb2 as pb
from services.audit.records import prepare
from services.audit.store import AuditStore


def test_decisions_are_realistic_and_valid() -> None:
    d = audit.decision(3)
    assert len(d.inputs.feature_names) == 8
    assert len(d.inputs.tensor.float_values) == 8
    assert len(d.explanation) == 3
    assert len(d.model.sha256) == 64
    assert d.policy.policy_id
    assert d.action
    rec = prepare([d, audit.decision(4, with_inputs=False)])
    assert rec[0].inputs is not None
    assert rec[1].inputs is None
    # Deterministic: the cache relies on it (but for the salted inputs digest, fresh on
    # every prepare).
    assert prepare([audit.decision(4, with_inputs=False)])[0].record == rec[1].record
    again, first = (pb.Decision.FromString(prepare([audit.decision(3)])[0].record), pb.Decision())
    first.ParseFromString(rec[0].record)
    assert again.inputs_digest != first.inputs_digest
    again.ClearField("inputs_digest")
    first.ClearField("inputs_digest")
    assert again == first
    assert audit.decision(3, run=1).decision_id != d.decision_id


def test_batch_sizes_cover_the_total_within_bounds() -> None:
    sizes = audit.batch_sizes(10_000, 100, 500)
    assert sum(sizes) == 10_000
    assert all(100 <= s <= 500 for s in sizes[:-1])
    assert sizes == audit.batch_sizes(10_000, 100, 500)
    assert [len(b) for b in audit.split(list(range(10)), [3, 7])] == [3, 7]


def test_raw_sqlite_baseline_writes_every_row(tmp_path: Path) -> None:
    records = prepare([audit.decision(i) for i in range(30)])
    batches = [audit.raw_rows(records[:10], 0), audit.raw_rows(records[10:], 10)]
    seconds = audit.raw_sqlite_run(tmp_path / "raw.db", batches)
    assert seconds > 0
    conn = sqlite3.connect(tmp_path / "raw.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT COUNT(*), MAX(idx) FROM raw_entries").fetchone() == (30, 29)
    assert conn.execute("SELECT COUNT(*) FROM raw_inputs").fetchone()[0] == 30
    conn.close()


def test_paced_measures_from_the_schedule() -> None:
    # Every append waits until the last one was sent: each latency then spans at least
    # the schedule from its own due time to the last one's (1 ms apart at 1000/s), plus
    # the last one's sender lag, whatever this machine's speed.
    n, rate = 20, 1000.0
    calls = 0
    all_sent = asyncio.Event()

    async def held(_: pb.Decision) -> None:
        nonlocal calls
        calls += 1
        if calls == n:
            all_sent.set()
        await all_sent.wait()

    decisions = [audit.decision(i) for i in range(n)]
    latency, lag = asyncio.run(audit.paced(held, decisions, rate))
    assert len(latency) == len(lag) == n
    for i, lat in enumerate(latency):
        assert lat >= lag[-1] + (n - 1 - i) * 1000 / rate - 1e-6, i
    assert all(lat >= g for lat, g in zip(latency, lag, strict=True))


def test_cached_log_is_reused_and_rebuilt_when_stale(tmp_path: Path) -> None:
    schema = audit.current_schema(tmp_path)
    path, meta = audit.cached_log(40, True, cache_dir=tmp_path, schema=schema)
    assert not meta["cached"]
    again, meta = audit.cached_log(40, True, cache_dir=tmp_path, schema=schema)
    assert again == path
    assert meta["cached"]
    # A different root in the metadata (e.g. the log was changed) forces a rebuild.
    meta_path = path.with_suffix(".json")
    data = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**data, "root": "00" * 32}))
    assert audit.cache_is_valid(path, 40, True, schema) == "size or root differs"
    _, meta = audit.cached_log(40, True, cache_dir=tmp_path, schema=schema)
    assert not meta["cached"]
    # A schema that is not today's forces a rebuild too.
    assert audit.cache_is_valid(path, 40, True, [*schema, "CREATE TABLE x (y)"]) == "schema differs"
    store = AuditStore.open(path, read_only=True)
    assert store.tree_size() == 40
    store.close()
    usage = audit.disk_usage(path)
    assert usage["entries"] == 40
    assert 0 < usage["tree_share"] < 1
    assert usage["wal_bytes"] == 0


def result(
    *, rate: float = 30_000.0, raw: float = 50_000.0, verify_s: float = 4.0
) -> dict[str, Any]:
    lat = {"p50": 1.2, "p99": 4.5, "max": 9.0, "n": 100, "sender_lag": {"p50": 0.3, "p99": 0.9}}
    return {
        "machine": {
            "cpu": "cpu",
            "cores": 2,
            "memory_gib": 24,
            "platform": "linux",
            "python": "3.11",
            "sqlite": "3.40.1",
            "date": "2026-12-01",
            "fsync_commit_ms": {"p50": 0.2, "p99": 0.4},
        },
        "quick": False,
        "total_s": 300.0,
        "errors": {"disk": "RuntimeError('x')"},
        "throughput": {
            "records": 60_000,
            "batches": 200,
            "appenders": 8,
            "batch_sizes": [100, 500],
            "audit_log_commits": [50, 60, 55],
            "raw_sqlite": {"runs": [raw], "median": raw},
            "raw_same_schema": {"runs": [raw / 2], "median": raw / 2},
            "audit_store": {"runs": [rate], "median": rate},
            "audit_log": {"runs": [rate], "median": rate},
            "ratio_vs_raw": rate / (raw / 2),
            "ratio_vs_plain": rate / raw,
        },
        "latency": {
            "rate": 500,
            "seconds": 20,
            "appends": 10_000,
            "in_process": lat,
            "grpc_error": "StackError()",
        },
        "proofs": {
            "entries": 1_000_000,
            "calls": 2000,
            "tree_size": 1_000_000,
            "build": {
                "build_s": 60.0,
                "generate_prepare_s": 30.0,
                "append_s": 30.0,
                "cached": True,
            },
            "store": {"p50": 0.1, "p99": 0.3, "max": 1.0},
            "store_read_only": {"p50": 0.12, "p99": 0.3, "max": 1.0},
            "audit_log": {"p50": 0.3, "p99": 0.8, "max": 2.0},
        },
        "export": {
            "entries": 100_000,
            "export_s": 8.0,
            "bundle_bytes": 120_000_000,
            "bytes_per_entry": 1200.0,
            "verify_s": {"runs": [verify_s], "median": verify_s},
            "report": {"entries": 100_000},
        },
    }


def test_report_passes_and_fails_floors() -> None:
    res = result()
    assert not audit_report.failed(res)
    _, md = audit_report.render(res)
    assert "| AuditLog durable appends, median (records/s) | 30,000 | >= 20,000 | PASS |" in md
    assert "| AuditLog / raw SQLite (same rows, same schema) | 120% | >= 50% | PASS |" in md
    assert "gRPC run not measured" in md
    assert "## Not measured" in md
    slow = result(rate=11_000.0, verify_s=12.0)
    assert audit_report.failed(slow)
    _, md = audit_report.render(slow)
    assert "| 11,000 | >= 20,000 | **FAIL** |" in md
    assert "| AuditLog / raw SQLite (same rows, same schema) | 44% | >= 50% | **FAIL** |" in md
    missing = result()
    del missing["export"]
    assert audit_report.failed(missing)  # a floor that was not measured does not pass
