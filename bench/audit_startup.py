"""Audit benchmark sections for issue 14 (no forks, witnesses, integrity at rest):

* start-up at 1M entries: what the audit service does before it serves (open the
  store, check the tree extends the checkpoint saved beside the key, re-check the
  newest entries, nodes, edge and checkpoints), and one whole background pass;
* the witness round trip: a checkpoint signed, submitted to a real ``roost audit
  witness`` process over HTTP with a consistency proof, cosigned, the cosignature
  verified and stored; p50/p99 over many growing checkpoints.

Used by ``bench/audit.py`` (sections ``startup`` and ``witness``, and their rows).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.report import markdown_table, percentile
from services.audit.checkpoint import Checkpoint, NoteSigner, sign_checkpoint
from services.audit.cosignature import CosignatureVerifier, require_cosignatures
from services.audit.integrity import CHUNK_LEVEL, IntegrityChecker
from services.audit.latest_checkpoint import FILE_NAME, LatestCheckpoint
from services.audit.log import AuditLog
from services.audit.store import AuditStore
from services.audit.witness_client import WitnessPeer, WitnessPool


def startup(path: Path, repeats: int, origin: str, tail_entries: int = 65_536) -> dict[str, Any]:
    """Start-up checks on the (cached, read-only used) log at ``path``."""
    signer = NoteSigner.generate(origin)
    store = AuditStore.open(path, read_only=True)
    try:
        size = store.tree_size()
        saved_size = max(0, size - 1_000)
        note = sign_checkpoint(signer, Checkpoint(origin, saved_size, store.root(saved_size)))
    finally:
        store.close()
    runs: dict[str, list[float]] = {"open_and_fork_check_s": [], "tail_check_s": []}
    with tempfile.TemporaryDirectory(prefix="audit-startup-") as tmp:
        latest = LatestCheckpoint(Path(tmp) / FILE_NAME, signer.verifier())
        for _ in range(repeats):
            latest.record(note)  # the service's last checkpoint, 1,000 entries back
            t0 = time.perf_counter()
            log = asyncio.run(AuditLog.open(path, latest=latest))
            t1 = time.perf_counter()
            checker = IntegrityChecker(path, signer.verifier())
            checker.check_startup(tail_entries)
            t2 = time.perf_counter()
            asyncio.run(log.close())
            runs["open_and_fork_check_s"].append(t1 - t0)
            runs["tail_check_s"].append(t2 - t1)
            assert checker.first_mismatch is None, checker.first_mismatch
            checker.close()
        checker = IntegrityChecker(path, signer.verifier())
        t0 = time.perf_counter()
        chunk = 1 << CHUNK_LEVEL
        for start in range(0, size, chunk):
            checker.check_entries(start, min(start + chunk, size))
        checker.check_checkpoints()
        full_s = time.perf_counter() - t0
        checker.close()
    total = [
        a + b for a, b in zip(runs["open_and_fork_check_s"], runs["tail_check_s"], strict=True)
    ]
    return {
        "entries": size,
        "tail_entries": tail_entries,
        **{k: {"runs": v, "median": statistics.median(v)} for k, v in runs.items()},
        "startup_s": {"runs": total, "median": statistics.median(total)},
        "full_pass_s": full_s,
        "full_pass_entries_per_s": size / full_s,
    }


class WitnessProcess:
    """``roost audit witness`` in its own process, on a free port."""

    def __init__(self, home: Path, log_vkey: str) -> None:
        self.ready = home / "ready.json"
        argv = [sys.executable, "-m", "cli.main", "--home", str(home), "audit", "witness"]
        argv += ["--state", str(home), "--log", log_vkey, "--listen", "127.0.0.1:0"]
        argv += ["--name", "witness.bench/w1", "--ready-file", str(self.ready)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not self.ready.is_file():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the witness did not start")
            time.sleep(0.05)
        info = json.loads(self.ready.read_text())
        self.url = f"http://127.0.0.1:{info['port']}"
        self.verifier = CosignatureVerifier.from_vkey(info["vkey"])

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(15)


async def _round_trips(
    db: Path, witness: WitnessProcess, signer: NoteSigner, rounds: int, make: Callable[[int], Any]
) -> list[float]:
    times: list[float] = []
    async with await AuditLog.open(db) as log:
        pool = WitnessPool(log, signer, [WitnessPeer(witness.url, witness.verifier)])
        task = asyncio.create_task(pool.run())
        try:
            for r in range(rounds + 5):
                await log.append([make(r * 10 + i) for i in range(10)])
                t0 = time.perf_counter()
                cp = await pool.cosign(await log.checkpoint(signer), 30)
                elapsed = time.perf_counter() - t0
                require_cosignatures(cp.note, [witness.verifier], 1)
                if r >= 5:  # the first rounds learn the witness's size and warm up
                    times.append(elapsed * 1000)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    return times


def witness_round_trip(rounds: int, origin: str, make: Callable[[int], Any]) -> dict[str, Any]:
    """Checkpoint to stored cosignature, through a real witness process (ms)."""
    signer = NoteSigner.generate(origin)
    home = Path(tempfile.mkdtemp(prefix="audit-witness-"))
    witness = WitnessProcess(home, signer.vkey())
    try:
        times = asyncio.run(_round_trips(home / "audit.db", witness, signer, rounds, make))
    finally:
        witness.stop()
        shutil.rmtree(home, ignore_errors=True)
    return {
        "rounds": len(times),
        "p50": percentile(times, 50),
        "p99": percentile(times, 99),
        "max": max(times),
    }


def report(res: dict[str, Any]) -> tuple[list[tuple[str, str, str, str]], list[str]]:
    """(table rows, markdown parts) of the two sections."""
    rows: list[tuple[str, str, str, str]] = []
    parts: list[str] = []
    st = res.get("startup")
    if st:
        rows.append(
            (
                f"start-up checks at {st['entries']:,} entries, median (s)",
                f"{st['startup_s']['median']:.2f}",
                "-",
                "",
            )
        )
        parts.append(
            f"## 6. Start-up at {st['entries']:,} entries (integrity at rest, no forks)\n\n"
            "What the audit service does before it serves: open the store (tree state "
            "against the entries), prove the tree extends the checkpoint saved beside the "
            "key (1,000 entries back), then re-check the newest "
            f"{st['tail_entries']:,} leaf hashes, their tree nodes, the tree edge and the "
            "newest checkpoints. The rest is re-checked in the background.\n\n"
            + markdown_table(
                ["step", "median (s)", "runs"],
                [
                    (label, f"{st[k]['median']:.2f}", ", ".join(f"{x:.2f}" for x in st[k]["runs"]))
                    for k, label in (
                        ("open_and_fork_check_s", "open + fork check"),
                        ("tail_check_s", "tail integrity check"),
                        ("startup_s", "total before serving"),
                    )
                ]
                + [
                    (
                        "one whole background pass (no pauses)",
                        f"{st['full_pass_s']:.1f}",
                        f"{st['full_pass_entries_per_s']:,.0f} entries/s",
                    )
                ],
            )
        )
    wt = res.get("witness")
    if wt:
        rows.append(
            (
                "witness round trip p50 / p99 (ms)",
                f"{wt['p50']:.2f} / {wt['p99']:.2f}",
                "-",
                "",
            )
        )
        parts.append(
            "## 7. Witness round trip (ms)\n\n"
            f"{wt['rounds']} checkpoints, 10 entries apart: sign, submit to a `roost audit "
            "witness` process on this machine (HTTP, consistency proof), cosignature "
            "verified and stored with the checkpoint.\n\n"
            + markdown_table(
                ["p50", "p99", "max"],
                [(f"{wt['p50']:.2f}", f"{wt['p99']:.2f}", f"{wt['max']:.2f}")],
            )
        )
    return rows, parts
