"""Audit log benchmark: durable appends, paced latency, proofs at 1M, export, disk use.

One run measures, side by side on this machine:
  1. durable append throughput through ``AuditLog`` (group commit, real fsync, 8
     concurrent appenders of 100..500-decision batches) against raw SQLite inserts of
     the same pre-prepared rows (WAL + synchronous=FULL, one transaction per batch,
     plain tables), plus ``AuditStore.append_prepared`` per batch for reference;
  2. append latency at a paced 500 records/s (open loop, one decision per append,
     measured from each append's scheduled time), in-process and through the gRPC
     audit service (mTLS);
  3. inclusion-proof time at 1,000,000 entries (``AuditStore`` and ``AuditLog``);
  4. export of a 100,000-entry time range (by ``logged_at``) of the 1,000,000-entry
     log and its offline verification, including the completeness proof (the range's
     boundary entries), alone and with the auditor's client-side ``--filter``;
  5. bytes per record on disk, with and without inputs, and the Merkle tree's share;
  6. start-up checks (no forks, integrity at rest) at 1,000,000 entries;
  7. the witness round trip through a real ``roost audit witness`` process
     (sections 6 and 7 are in ``bench/audit_startup.py``).

The 1M-entry (and other) logs are cached under var/bench/, keyed by the schema and
data version and checked against a freshly generated sample, so reruns skip the build.
Results: a printed table and bench/results/audit.{json,md,png}. ``--quick`` runs a
small smoke version (results in var/bench/). Exits 1 if a floor fails (``--no-fail``).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, is_dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from bench import audit_startup
from bench.audit_plan import BUILD_CHUNK, FULL, QUICK, Plan
from bench.audit_report import failed, plot, render
from bench.machine import machine_info
from bench.report import percentile, write
from roost.audit.v1 import audit_service_pb2 as pb
from roost.common.v1 import common_pb2
from services.audit import tree
from services.audit.bundle_format import ExportFilters, LoggedRange
from services.audit.checkpoint import Checkpoint, NoteSigner, sign_checkpoint
from services.audit.compact_range import CompactRange
from services.audit.completeness import logged_at_us
from services.audit.log import AuditLog
from services.audit.merkle import verify_inclusion
from services.audit.records import PreparedRecord, assign_rows, prepare
from services.audit.schema import ENTRY_COLUMNS, SCHEMA_VERSION, migrate
from services.audit.store import AuditStore

console = Console()
# What services.kit.process.configure_process sets in every Roost process.
SERVICE_SWITCH_INTERVAL = 0.0005
ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = ROOT / "var" / "bench"
# Bump when the generated decisions change. (A changed generator is also caught by
# comparing the cached leaves with fresh ones, but the version makes it explicit.)
DATA_VERSION = 1
T0_US = 1_780_000_000_000_000  # a fixed instant in 2026
HUB_ID = "bench"
ORIGIN = f"roost.local/hub/{HUB_ID}"


# (entity, model, version, action, label) per kind of decision the hub takes.
KINDS = (
    ("binary_sensor.kitchen_occupancy", "occupancy", "1.2.0", "publish", "occupied"),
    ("climate.living_room", "comfort", "2.0.1", "set_temperature", "warmer"),
    ("sensor.hallway_anomaly", "anomaly", "1.0.3", "notify", "anomalous"),
    ("automation.evening_lights", "routine", "0.9.0", "suggest", "lights_on"),
    ("binary_sensor.office_occupancy", "occupancy", "1.2.0", "publish", "vacant"),
)
FEATURES = (
    "co2_ppm",
    "motion",
    "temperature_c",
    "humidity_pct",
    "light_lux",
    "door_open",
    "hour_sin",
    "hour_cos",
)
MODEL_SHA256 = {k[1]: hashlib.sha256(f"{k[1]}-{k[2]}".encode()).hexdigest() for k in KINDS}


# --------------------------------------------------------------------------- decisions


def decision_id(i: int, run: int = 0) -> str:
    return f"{run:08x}-0000-4000-8000-{i:012x}"


def decision(i: int, *, run: int = 0, with_inputs: bool = True) -> pb.Decision:
    """A realistic, deterministic decision: model ref with sha256, 8 input features,
    an explanation of 3 attributions, policy, action."""
    entity, model, version, action, label = KINDS[i % len(KINDS)]
    u = (i * 2_654_435_761 % 4_294_967_296) / 4_294_967_296  # cheap, repeatable "noise"
    confidence = 0.55 + 0.44 * u
    d = pb.Decision(
        decision_id=decision_id(i, run),
        hub_id=HUB_ID,
        entity_id=entity,
        model=common_pb2.ModelRef(name=model, version=version, sha256=MODEL_SHA256[model]),
        output_values=[1.0 - confidence, confidence],
        output_label=label,
        confidence=confidence,
        explanation=[
            common_pb2.FeatureAttribution(feature=FEATURES[(i + k) % 8], attribution=w)
            for k, w in enumerate((0.42 * u + 0.1, -0.21 * u, 0.05 + 0.1 * u))
        ],
        policy=pb.Policy(
            policy_id=f"{model}.threshold",
            verdict=pb.POLICY_VERDICT_ALLOWED,
            reason=f"confidence {confidence:.2f} >= 0.55",
        ),
        action=action,
        actor=pb.ACTOR_AUTOMATIC,
    )
    d.decided_at.FromMicroseconds(T0_US + i * 1_000_000 + (i * 7919) % 1_000_000)
    if with_inputs:
        d.inputs.feature_names.extend(FEATURES)
        t = d.inputs.tensor
        t.dtype = common_pb2.DATA_TYPE_FLOAT32
        t.shape.extend([1, len(FEATURES)])
        t.float_values.extend(
            (
                *(400.0 + 800.0 * u, float(i % 2), 19.0 + 5.0 * u, 35.0 + 20.0 * u),
                *(900.0 * u, float(i % 3 == 0), 0.5 - u, u - 0.25),
            )
        )
    return d


def batch_sizes(total: int, lo: int, hi: int, seed: int = 7) -> list[int]:
    """Random batch sizes in [lo, hi] summing to ``total`` (the last may be smaller)."""
    rng = random.Random(seed)
    sizes: list[int] = []
    left = total
    while left > 0:
        size = min(rng.randint(lo, hi), left)
        sizes.append(size)
        left -= size
    return sizes


def split(items: Sequence[Any], sizes: Sequence[int]) -> list[list[Any]]:
    out, start = [], 0
    for size in sizes:
        out.append(list(items[start : start + size]))
        start += size
    return out


def summary(values_ms: Sequence[float]) -> dict[str, float]:
    return {
        "p50": percentile(values_ms, 50),
        "p99": percentile(values_ms, 99),
        "max": max(values_ms) if values_ms else float("nan"),
        "n": len(values_ms),
    }


# --------------------------------------------------------------------------- 1. throughput

RAW_SCHEMA = (
    """CREATE TABLE raw_entries (
        idx INTEGER PRIMARY KEY, decision_id TEXT, decided_at_us INTEGER, entity_id TEXT,
        model_name TEXT, model_version TEXT, action TEXT, record BLOB, leaf_hash BLOB,
        appended_at_us INTEGER, logged_at_us INTEGER)""",
    "CREATE TABLE raw_inputs (idx INTEGER PRIMARY KEY, data BLOB)",
)
# The floor's baseline: the very rows the store writes (entries, inputs, Merkle tree
# nodes and the tree state), pre-computed before timing, inserted with executemany into
# the store's own schema (same tables, indexes and triggers, built by its migrations).
SameBatch = tuple[
    list[tuple[Any, ...]], list[tuple[int, bytes]], list[tuple[int, int, bytes]], bytes, int
]
RAW_ENTRY_INSERT = f"INSERT INTO raw_entries VALUES ({','.join('?' * 11)})"
RAW_INPUT_INSERT = "INSERT INTO raw_inputs VALUES (?, ?)"
RawBatch = tuple[list[tuple[Any, ...]], list[tuple[int, bytes]]]


def raw_rows(records: Sequence[PreparedRecord], first_idx: int = 0) -> RawBatch:
    """The rows the store would write for ``records``: entries columns (records stamped
    with their logged_at and hashed, as the store does), inputs (idx, data)."""
    now_us = time.time_ns() // 1000
    _, entries, inputs = assign_rows(records, {}, first_idx, (now_us, now_us))
    return entries, inputs


def open_raw(path: Path) -> sqlite3.Connection:
    """Plain tables, same settings as the store: WAL, synchronous=FULL."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA journal_size_limit = 67108864")
    for sql in RAW_SCHEMA:
        conn.execute(sql)
    return conn


def raw_sqlite_run(path: Path, batches: Sequence[RawBatch]) -> float:
    """Seconds to insert every batch with executemany, one durable transaction each."""
    conn = open_raw(path)
    try:
        t0 = time.perf_counter()
        for entries, inputs in batches:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(RAW_ENTRY_INSERT, entries)
            conn.executemany(RAW_INPUT_INSERT, inputs)
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - t0
        (count,) = conn.execute("SELECT COUNT(*) FROM raw_entries").fetchone()
    finally:
        conn.close()
    assert count == sum(len(e) for e, _ in batches)
    return elapsed


def same_rows(batches: Sequence[Sequence[PreparedRecord]]) -> list[SameBatch]:
    """Per batch, every row AuditStore writes for it: entries, inputs, tree nodes, state."""
    compact = CompactRange()
    out: list[SameBatch] = []
    first = 0
    for batch in batches:
        entries, inputs = raw_rows(batch, first)
        nodes = tree.extend(compact, (row[8] for row in entries))  # column 8: leaf hash
        out.append((entries, inputs, nodes, compact.to_bytes(), compact.size))
        first += len(batch)
    return out


def raw_same_schema_run(path: Path, batches: Sequence[SameBatch]) -> float:
    """Seconds to insert the store's own rows into its own schema, one durable txn each."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA journal_size_limit = 67108864")
    migrate(conn)
    entry_sql = f"INSERT INTO entries ({ENTRY_COLUMNS}) VALUES ({','.join('?' * 11)})"
    try:
        t0 = time.perf_counter()
        for entries, inputs, nodes, state, size in batches:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(entry_sql, entries)
            conn.executemany("INSERT INTO inputs (idx, data) VALUES (?, ?)", inputs)
            conn.executemany("INSERT INTO tree_nodes (level, idx, hash) VALUES (?, ?, ?)", nodes)
            conn.execute("UPDATE tree_state SET size = ?, compact = ? WHERE id = 0", (size, state))
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - t0
        (count,) = conn.execute("SELECT COUNT(*) FROM entries").fetchone()
    finally:
        conn.close()
    assert count == sum(len(b[0]) for b in batches)
    return elapsed


def store_run(path: Path, batches: Sequence[Sequence[PreparedRecord]]) -> float:
    """Seconds for ``AuditStore.append_prepared``, one transaction per batch, one thread."""
    store = AuditStore.open(path)
    try:
        t0 = time.perf_counter()
        for batch in batches:
            store.append_prepared([batch])
        elapsed = time.perf_counter() - t0
        assert store.size() == sum(len(b) for b in batches)
    finally:
        store.close()
    return elapsed


async def audit_log_run(
    path: Path, batches: Sequence[Sequence[pb.Decision]], appenders: int
) -> tuple[float, int]:
    """(seconds, commits) for ``appenders`` tasks appending the batches through AuditLog.

    As in the service: each batch is a fresh message (parsed outside the timing, as gRPC
    would), appended with ``consume=True``, under the service's GIL switch interval.
    """
    batches = [[pb.Decision.FromString(d.SerializeToString()) for d in b] for b in batches]
    switch = sys.getswitchinterval()
    sys.setswitchinterval(SERVICE_SWITCH_INTERVAL)
    log = await AuditLog.open(path)
    try:
        queue = deque(batches)

        async def appender() -> None:
            while queue:
                await log.append(queue.popleft(), consume=True)

        t0 = time.perf_counter()
        await asyncio.gather(*(appender() for _ in range(appenders)))
        elapsed = time.perf_counter() - t0
        assert await log.size() == sum(len(b) for b in batches)
        return elapsed, log.commits
    finally:
        await log.close()
        sys.setswitchinterval(switch)


def throughput(plan: Plan, scratch: Path) -> dict[str, Any]:
    n = plan.throughput_records
    sizes = batch_sizes(n, plan.batch_min, plan.batch_max)
    decisions = [decision(i, run=1) for i in range(n)]
    prepared = prepare(decisions)
    decision_batches = split(decisions, sizes)
    prepared_batches = split(prepared, sizes)
    rows: list[RawBatch] = []
    first = 0
    for batch in prepared_batches:
        rows.append(raw_rows(batch, first))
        first += len(batch)
    same = same_rows(prepared_batches)
    runs: dict[str, list[float]] = {
        "raw_sqlite": [],
        "raw_same_schema": [],
        "audit_store": [],
        "audit_log": [],
    }
    commits: list[int] = []

    def once(variant: str, path: Path) -> float:
        if variant == "raw_sqlite":
            return raw_sqlite_run(path, rows)
        if variant == "raw_same_schema":
            return raw_same_schema_run(path, same)
        if variant == "audit_store":
            return store_run(path, prepared_batches)
        seconds, group_commits = asyncio.run(audit_log_run(path, decision_batches, plan.appenders))
        commits.append(group_commits)
        return seconds

    variants = list(runs)
    for rep in range(plan.throughput_repeats):
        # Rotate the order so no variant always runs first (warm caches, noisy neighbours).
        shift = rep % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            path = scratch / f"tp-{variant}-{rep}.db"
            seconds = once(variant, path)
            runs[variant].append(n / seconds)
            console.print(f"  {variant}: {n / seconds:,.0f} records/s")
            remove_db(path)
    out: dict[str, Any] = {
        "records": n,
        "batches": len(sizes),
        "appenders": plan.appenders,
        "batch_sizes": [plan.batch_min, plan.batch_max],
        "audit_log_commits": commits,
    }
    for variant, rates in runs.items():
        out[variant] = {"runs": rates, "median": statistics.median(rates)}
    # The floor: AuditLog against raw inserts of the same rows into the same schema.
    out["ratio_vs_raw"] = out["audit_log"]["median"] / out["raw_same_schema"]["median"]
    # Context: against bare tables without indexes, triggers or tree rows.
    out["ratio_vs_plain"] = out["audit_log"]["median"] / out["raw_sqlite"]["median"]
    # Per repeat (the variants of one repeat ran back to back): less exposed to drift.
    out["paired_ratios"] = [
        log_rate / raw_rate
        for log_rate, raw_rate in zip(runs["audit_log"], runs["raw_same_schema"], strict=True)
    ]
    return out


# --------------------------------------------------------------------------- 2. latency


async def paced(
    append_one: Callable[[pb.Decision], Awaitable[object]],
    decisions: Sequence[pb.Decision],
    rate: float,
) -> tuple[list[float], list[float]]:
    """Open-loop appends at ``rate``/s; returns (latency ms, sender lag ms) per append.

    Latency runs from each append's *scheduled* time, so a stalled sender or event loop
    counts against the system (no coordinated omission); the sender lag (actual send
    minus scheduled time) shows how much of it is the load generator's own timer slack.
    """
    n = len(decisions)
    latency = [0.0] * n
    lag = [0.0] * n
    tasks: list[asyncio.Task[None]] = []

    async def one(i: int, due: float) -> None:
        lag[i] = (time.perf_counter() - due) * 1000
        await append_one(decisions[i])
        latency[i] = (time.perf_counter() - due) * 1000

    start = time.perf_counter() + 0.05
    for i in range(n):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    return latency, lag


async def latency_in_process(plan: Plan, scratch: Path) -> dict[str, Any]:
    n = int(plan.paced_rate * plan.paced_seconds)
    warm = [decision(i, run=2) for i in range(plan.warmup_appends)]
    decisions = [decision(i, run=3) for i in range(n)]
    path = scratch / "paced.db"
    log = await AuditLog.open(path)
    try:
        for d in warm:
            await log.append([d])
        commits0 = log.commits
        latency, lag = await paced(lambda d: log.append([d]), decisions, plan.paced_rate)
        commits = log.commits - commits0
    finally:
        await log.close()
    remove_db(path)
    return {**summary(latency), "sender_lag": summary(lag), "commits": commits}


async def latency_grpc(plan: Plan, scratch: Path) -> dict[str, Any]:
    """The same paced run against a real audit service process over gRPC with mTLS."""
    from grpc import aio

    from cli.stack import Stack
    from roost.audit.v1 import audit_service_pb2_grpc as pb_grpc
    from services.kit.auth import Role
    from services.kit.client import aio_channel

    n = int(plan.paced_rate * plan.paced_seconds)
    warm = [decision(i, run=4) for i in range(plan.warmup_appends)]
    decisions = [decision(i, run=5) for i in range(n)]
    with Stack(scratch / "stack", hub_id=HUB_ID, log_level="WARNING") as stack:
        stack.start_service(Role.AUDIT)
        channel: aio.Channel = aio_channel(
            f"127.0.0.1:{stack.port_of(Role.AUDIT)}",
            certs_dir=stack.certs_dir,
            role=Role.HUB,
            server_role=Role.AUDIT,
        )
        async with channel:
            stub = pb_grpc.AuditServiceStub(channel)

            async def append_one(d: pb.Decision) -> object:
                request = pb.AppendDecisionsRequest(decisions=[d])
                return await stub.AppendDecisions(request, timeout=30)

            for d in warm:
                await append_one(d)
            latency, lag = await paced(append_one, decisions, plan.paced_rate)
    return {**summary(latency), "sender_lag": summary(lag)}


def latency(plan: Plan, scratch: Path) -> dict[str, Any]:
    n = int(plan.paced_rate * plan.paced_seconds)
    out: dict[str, Any] = {"rate": plan.paced_rate, "seconds": plan.paced_seconds, "appends": n}
    console.print(f"  in-process AuditLog, {plan.paced_rate}/s for {plan.paced_seconds:g} s ...")
    out["in_process"] = asyncio.run(latency_in_process(plan, scratch))
    if plan.grpc:
        console.print(f"  gRPC audit service, {plan.paced_rate}/s for {plan.paced_seconds:g} s ...")
        try:
            out["grpc"] = asyncio.run(latency_grpc(plan, scratch))
        except Exception as exc:  # the stack could not start here: say so, keep going
            console.print(f"[yellow]  gRPC run failed: {exc!r}[/]")
            out["grpc_error"] = repr(exc)
    for where in ("in_process", "grpc"):
        if where in out:
            r = out[where]
            console.print(
                f"  {where}: p50 {r['p50']:.2f} ms, p99 {r['p99']:.2f} ms, max {r['max']:.2f} ms"
            )
    return out


# --------------------------------------------------------------------------- cached logs


def cache_key(entries: int, with_inputs: bool) -> str:
    kind = "inputs" if with_inputs else "noinputs"
    return f"schema{SCHEMA_VERSION}-data{DATA_VERSION}-{kind}-{entries}"


def schema_sql(conn: sqlite3.Connection) -> list[str]:
    rows = conn.execute(
        "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY type, name"
    ).fetchall()
    return [str(r[0]) for r in rows]


def current_schema(scratch: Path) -> list[str]:
    """The schema a new store gets today (catches schema edits without a version bump)."""
    path = scratch / "schema-probe.db"
    AuditStore.open(path).close()
    conn = sqlite3.connect(path)
    try:
        return schema_sql(conn)
    finally:
        conn.close()
        remove_db(path)


def cache_is_valid(path: Path, entries: int, with_inputs: bool, schema: list[str]) -> str:
    """ "" if the cached log at ``path`` is usable, else why it is stale."""
    meta_path = path.with_suffix(".json")
    if not path.is_file() or not meta_path.is_file():
        return "missing"
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("key") != cache_key(entries, with_inputs):
            return "different key"
        conn = read_connection(path)
        try:
            if schema_sql(conn) != schema:
                return "schema differs"
            if conn.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                return "schema version differs"
        finally:
            conn.close()
        store = AuditStore.open(path, read_only=True)  # checks tree state == entries
        try:
            if store.tree_size() != entries or store.root().hex() != meta.get("root"):
                return "size or root differs"
            # The generator must still produce the cached records (but for the salted
            # inputs digest, which is fresh every time, and the logged_at the log adds).
            for i in (0, entries // 2, entries - 1):
                fresh = prepare([decision(i, with_inputs=with_inputs)])[0]
                cached = pb.Decision.FromString(store.get(fresh.decision_id).record)
                expected = pb.Decision.FromString(fresh.record)
                for d in (cached, expected):
                    d.ClearField("inputs_digest")
                    d.ClearField("logged_at")
                if cached != expected:
                    return "generated decisions changed"
        finally:
            store.close()
    except Exception as exc:  # any damage: rebuild
        return f"unreadable ({exc.__class__.__name__}: {exc})"
    return ""


def remove_db(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def build_log(path: Path, entries: int, with_inputs: bool) -> dict[str, float]:
    """Builds a log of ``entries`` decisions with append_prepared in batches of 10k."""
    remove_db(path)
    prepare_s = append_s = 0.0
    store = AuditStore.open(path)
    try:
        for start in range(0, entries, BUILD_CHUNK):
            t0 = time.perf_counter()
            records = prepare(
                [
                    decision(i, with_inputs=with_inputs)
                    for i in range(start, min(entries, start + BUILD_CHUNK))
                ]
            )
            t1 = time.perf_counter()
            store.append_prepared([records])
            append_s += time.perf_counter() - t1
            prepare_s += t1 - t0
    finally:
        store.close()
    checkpoint_truncate(path)
    return {"generate_prepare_s": prepare_s, "append_s": append_s}


def cached_log(
    entries: int, with_inputs: bool, *, cache_dir: Path, schema: list[str], rebuild: bool = False
) -> tuple[Path, dict[str, Any]]:
    """Path of a log of ``entries`` generated decisions; built (and cached) if stale."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(entries, with_inputs)
    path = cache_dir / f"audit-{key}.db"
    stale = "rebuild requested" if rebuild else cache_is_valid(path, entries, with_inputs, schema)
    if not stale:
        meta: dict[str, Any] = json.loads(path.with_suffix(".json").read_text())
        return path, {**meta, "cached": True}
    console.print(f"  building {entries:,}-entry log ({key}; cache: {stale}) ...")
    kind = "inputs" if with_inputs else "noinputs"
    for old in cache_dir.glob(f"audit-schema*-data*-{kind}-{entries}.*"):
        if not old.name.startswith(f"audit-{key}."):
            old.unlink(missing_ok=True)  # an older version of the same log: free the disk
    building = cache_dir / f"audit-{key}.building.db"
    t0 = time.perf_counter()
    parts = build_log(building, entries, with_inputs)
    build_s = time.perf_counter() - t0
    remove_db(path)
    os.replace(building, path)
    remove_db(building)
    store = AuditStore.open(path, read_only=True)
    try:
        root = store.root().hex()
    finally:
        store.close()
    meta = {"key": key, "entries": entries, "root": root, "build_s": build_s, **parts}
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    console.print(f"  built in {build_s:.1f} s")
    return path, {**meta, "cached": False}


def read_connection(path: Path) -> sqlite3.Connection:
    """A query-only connection (an ordinary one, so closing it removes the -wal/-shm files)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA query_only = ON")
    return conn


def checkpoint_truncate(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        conn.close()


# --------------------------------------------------------------------------- 3. proofs


async def proof_times(path: Path, indexes: Sequence[int], size: int) -> dict[str, list[float]]:
    """Per-call ms of the three ways to prove inclusion, interleaved call by call so
    they see the same cache state and the same noisy neighbours."""
    writer = AuditStore.open(path)
    reader = AuditStore.open(path, read_only=True)
    log = await AuditLog.open(path)
    times: dict[str, list[float]] = {"store": [], "store_read_only": [], "audit_log": []}
    try:
        root = writer.root(size)
        for i in indexes[:50]:  # warm-up
            writer.inclusion_proof(i, size)
            reader.inclusion_proof(i, size)
            await log.inclusion_proof(decision_id(i), size)
        for i in indexes:
            t0 = time.perf_counter()
            proof = writer.inclusion_proof(i, size)
            t1 = time.perf_counter()
            reader.inclusion_proof(i, size)
            t2 = time.perf_counter()
            index, _ = await log.inclusion_proof(decision_id(i), size)
            t3 = time.perf_counter()
            times["store"].append((t1 - t0) * 1000)
            times["store_read_only"].append((t2 - t1) * 1000)
            times["audit_log"].append((t3 - t2) * 1000)
            assert index == i
        # The proofs are real: check the last one against the root.
        verify_inclusion(writer.get(decision_id(i)).leaf_hash, i, size, proof, root)
    finally:
        writer.close()
        reader.close()
        await log.close()
    return times


def proofs(plan: Plan, path: Path, build: dict[str, Any]) -> dict[str, Any]:
    n = plan.proof_entries
    rng = random.Random(11)
    indexes = [rng.randrange(n) for _ in range(plan.proof_calls)]
    out: dict[str, Any] = {"entries": n, "calls": len(indexes), "tree_size": n, "build": build}
    for mode, times in asyncio.run(proof_times(path, indexes, n)).items():
        out[mode] = summary(times)
        r = out[mode]
        console.print(f"  {mode}: p50 {r['p50']:.3f} ms, p99 {r['p99']:.3f} ms")
    return out


# --------------------------------------------------------------------------- 4. export


def range_bounds(store: AuditStore, size: int, entries: int) -> tuple[int, int, LoggedRange]:
    """``(first, end, range)``: a ``logged_at`` range of about ``entries`` leaves in the
    middle of the log. The log was built in chunks of BUILD_CHUNK appends, each stamped
    with one logged_at, so the range's bounds are the stamps of two chunk starts."""
    chunks = max(1, entries // BUILD_CHUNK)
    first = max(0, (size // 2 // BUILD_CHUNK - chunks // 2) * BUILD_CHUNK)
    end = min(size, first + chunks * BUILD_CHUNK)

    def stamp(i: int) -> int | None:
        return None if i >= size else logged_at_us(store.get(decision_id(i)).decision)

    logged = LoggedRange(stamp(first) if first else None, stamp(end))
    assert store.logged_range(logged.start_us, logged.end_us, size) == (first, end)
    return first, end, logged


def export(plan: Plan, path: Path, build: dict[str, Any], scratch: Path) -> dict[str, Any]:
    """A time-range export of the big log, verified offline with its completeness proof."""
    from services.audit.export import iter_bundle
    from services.audit.verify import verify_bundle

    signer = NoteSigner.generate(ORIGIN)
    store = AuditStore.open(path, read_only=True)
    bundle = scratch / "export.jsonl"
    try:
        size = store.tree_size()
        first, end, logged = range_bounds(store, size, plan.export_entries)
        note = sign_checkpoint(signer, Checkpoint(signer.name, size, store.root(size)))
        t0 = time.perf_counter()
        with bundle.open("wb") as f:
            for chunk in iter_bundle(
                store, note=note, origin=ORIGIN, filters=ExportFilters(), logged=logged
            ):
                f.write(chunk)
        export_s = time.perf_counter() - t0
    finally:
        store.close()
    nbytes = bundle.stat().st_size
    verify_runs: list[float] = []
    # CPU seconds of each run: on a shared machine the wall time also counts waiting.
    verify_cpu: list[float] = []
    report: Any = None
    for _ in range(plan.export_repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        with bundle.open("rb") as f:
            report = verify_bundle(f, signer.verifier())
        verify_runs.append(time.perf_counter() - t0)
        verify_cpu.append(time.process_time() - c0)
        console.print(f"  verify: {verify_runs[-1]:.2f} s ({verify_cpu[-1]:.2f} s CPU)")
    assert report.complete
    assert report.entries == end - first
    # The auditor's own filter over the verified range (``verify --filter``).
    select = ExportFilters(entity_id=decision(first).entity_id)
    t0 = time.perf_counter()
    with bundle.open("rb") as f:
        filtered = verify_bundle(f, signer.verifier(), select=select)
    filter_s = time.perf_counter() - t0
    bundle.unlink()
    entries = end - first
    return {
        "entries": entries,
        "log_entries": size,
        "leaf_range": [first, end],
        "build": build,
        "export_s": export_s,
        "bundle_bytes": nbytes,
        "bytes_per_entry": nbytes / entries,
        "verify_s": {"runs": verify_runs, "median": statistics.median(verify_runs)},
        "verify_cpu_s": {"runs": verify_cpu, "median": statistics.median(verify_cpu)},
        "filter_verify_s": filter_s,
        "filter_matched": filtered.matched,
        "report": describe_report(report),
    }


def describe_report(report: object) -> dict[str, Any]:
    """The verifier's report as plain JSON (whatever its exact fields are)."""
    if report is None:
        return {}
    if is_dataclass(report) and not isinstance(report, type):
        fields = asdict(report)
    else:
        fields = dict(getattr(report, "__dict__", {}))
    return {k: v for k, v in fields.items() if isinstance(v, int | float | str | bool)}


# --------------------------------------------------------------------------- 5. disk

TREE_NODE_OVERHEAD = 11  # per row: record header 4, level/idx varints ~4, cell pointer 2, ...


def disk_usage(path: Path) -> dict[str, Any]:
    """Bytes per record after a TRUNCATE checkpoint, and tree_nodes' share (dbstat)."""
    checkpoint_truncate(path)
    conn = read_connection(path)
    try:
        (entries,) = conn.execute("SELECT COUNT(*) FROM entries").fetchone()
        (nodes,) = conn.execute("SELECT COUNT(*) FROM tree_nodes").fetchone()
        (with_inputs,) = conn.execute("SELECT COUNT(*) FROM inputs").fetchone()
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        try:
            per_object = dict(
                conn.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name").fetchall()
            )
            method = "dbstat (exact pages per table/index)"
        except sqlite3.OperationalError:
            per_object = {}
            method = (
                f"estimate: tree_nodes rows x (32 B hash + {TREE_NODE_OVERHEAD} B overhead),"
                " full pages (dbstat unavailable)"
            )
    finally:
        conn.close()
    db = path.stat().st_size
    wal_path = Path(f"{path}-wal")
    wal = wal_path.stat().st_size if wal_path.exists() else 0
    total = db + wal
    if per_object:
        tree_bytes = int(per_object.get("tree_nodes", 0))
        groups = {
            "entries": int(per_object.get("entries", 0)),
            "entries indexes": sum(
                int(v)
                for k, v in per_object.items()
                if k.startswith(("entries_", "sqlite_autoindex_entries"))
            ),
            "inputs": int(per_object.get("inputs", 0)),
            "tree_nodes": tree_bytes,
        }
        groups["other"] = total - sum(groups.values())
    else:
        tree_bytes = nodes * (32 + TREE_NODE_OVERHEAD)
        groups = {"tree_nodes (estimate)": tree_bytes}
    return {
        "entries": entries,
        "entries_with_inputs": with_inputs,
        "tree_nodes_rows": nodes,
        "page_size": page_size,
        "db_bytes": db,
        "wal_bytes": wal,
        "bytes_per_record": total / entries,
        "tree_bytes_per_record": tree_bytes / entries,
        "tree_share": tree_bytes / total,
        "breakdown_bytes": groups,
        "method": method,
    }


def disk(paths: dict[str, Path]) -> dict[str, Any]:
    out = {}
    for name, path in paths.items():
        out[name] = disk_usage(path)
        d = out[name]
        console.print(f"  {name}: {d['bytes_per_record']:.0f} B/record, tree {d['tree_share']:.0%}")
    return out


# --------------------------------------------------------------------------- run


def fsync_commit_ms(scratch: Path, commits: int = 200) -> dict[str, float]:
    """One-row durable commits: what a single fsync costs on this disk."""
    path = scratch / "fsync.db"
    conn = open_raw(path)
    times = []
    try:
        for i in range(commits):
            t0 = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(RAW_INPUT_INSERT, (i, b"x"))
            conn.execute("COMMIT")
            times.append((time.perf_counter() - t0) * 1000)
    finally:
        conn.close()
        remove_db(path)
    return {"p50": percentile(times, 50), "p99": percentile(times, 99)}


@dataclass
class Section:
    name: str
    run: Callable[[], dict[str, Any]]


def bench(plan: Plan, *, rebuild: bool = False, cache_dir: Path = CACHE_DIR) -> dict[str, Any]:
    cache_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    load_start = os.getloadavg()[0]
    res: dict[str, Any] = {
        "machine": {**machine_info(), "sqlite": sqlite3.sqlite_version},
        "plan": asdict(plan),
        "quick": plan != FULL,
        "errors": {},
    }
    with tempfile.TemporaryDirectory(prefix="audit-", dir=cache_dir) as tmp:
        scratch = Path(tmp)
        res["machine"]["fsync_commit_ms"] = fsync_commit_ms(scratch)
        schema = current_schema(scratch)
        logs: dict[str, tuple[Path, dict[str, Any]]] = {}

        def log_for(name: str, entries: int, with_inputs: bool) -> tuple[Path, dict[str, Any]]:
            if name not in logs:
                logs[name] = cached_log(
                    entries, with_inputs, cache_dir=cache_dir, schema=schema, rebuild=rebuild
                )
            return logs[name]

        sections = [
            Section(
                "startup",
                lambda: audit_startup.startup(
                    log_for("proof", plan.proof_entries, True)[0], plan.startup_repeats, ORIGIN
                ),
            ),
            Section(
                "witness",
                lambda: audit_startup.witness_round_trip(plan.witness_rounds, ORIGIN, decision),
            ),
            Section("throughput", lambda: throughput(plan, scratch)),
            Section("latency", lambda: latency(plan, scratch)),
            Section(
                "proofs",
                lambda: proofs(plan, *log_for("proof", plan.proof_entries, True)),
            ),
            Section(
                "export",
                lambda: export(plan, *log_for("proof", plan.proof_entries, True), scratch),
            ),
            Section(
                "disk",
                lambda: disk(
                    {
                        f"with inputs, {plan.proof_entries:,} entries": log_for(
                            "proof", plan.proof_entries, True
                        )[0],
                        f"with inputs, {plan.export_entries:,} entries": log_for(
                            "export", plan.export_entries, True
                        )[0],
                        f"without inputs, {plan.no_inputs_entries:,} entries": log_for(
                            "no_inputs", plan.no_inputs_entries, False
                        )[0],
                    }
                ),
            ),
        ]
        for section in sections:
            console.print(f"[bold]{section.name}[/] ...")
            t0 = time.perf_counter()
            try:
                res[section.name] = section.run()
            except Exception as exc:
                console.print(f"[red]{section.name} failed: {exc!r}[/]")
                res["errors"][section.name] = repr(exc)
            console.print(f"  ({time.perf_counter() - t0:.1f} s)")
    res["total_s"] = time.perf_counter() - t_start
    res["load_average"] = {"start": load_start, "end": os.getloadavg()[0]}
    return res


# --------------------------------------------------------------------------- report


def save(res: dict[str, Any], md: str, out_dir: Path | None) -> list[Path]:
    """Official runs go to bench/results/audit.*; quick runs to var/bench/audit-quick.*."""
    if out_dir is None:
        js, mdp = write("audit", res, md)
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        js, mdp = out_dir / "audit-quick.json", out_dir / "audit-quick.md"
        js.write_text(json.dumps(res, indent=2) + "\n")
        mdp.write_text(md + "\n")
    return [js, mdp]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.audit", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small smoke run (results in var/bench/)")
    p.add_argument("--no-fail", action="store_true", help="exit 0 even if a floor fails")
    p.add_argument("--no-grpc", action="store_true", help="skip the gRPC latency run")
    p.add_argument("--rebuild", action="store_true", help="rebuild the cached logs")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    plan = QUICK if args.quick else FULL
    if args.no_grpc:
        plan = replace(plan, grpc=False)
    res = bench(plan, rebuild=args.rebuild)
    out_dir = CACHE_DIR if args.quick else None
    save(res, "", out_dir)  # the raw results first, whatever happens next
    table, md = render(res)
    console.print(table)
    paths = save(res, md, out_dir)
    png = paths[1].with_suffix(".png")
    plot(res, png)
    console.print(f"written: {', '.join(map(str, [*paths, png]))}")
    if failed(res):
        console.print("[red]a floor failed or was not measured[/]")
        return 0 if args.no_fail else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
