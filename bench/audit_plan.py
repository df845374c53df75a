"""The audit benchmark's sizes (a full run and a quick smoke run of the same code) and
its floors: shared by the measuring half (:mod:`bench.audit`) and the report
(:mod:`bench.audit_report`)."""

from __future__ import annotations

from dataclasses import dataclass

BUILD_CHUNK = 10_000

# Floors.
MIN_RECORDS_PER_S = 20_000
MIN_RAW_SHARE = 0.5
MAX_PROOF_P50_MS = 1.0
MAX_VERIFY_S = 10.0


@dataclass(frozen=True)
class Plan:
    """Sizes of one run; ``QUICK`` is a smoke run of the same code."""

    throughput_records: int = 100_000
    throughput_repeats: int = 3
    appenders: int = 8
    batch_min: int = 100
    batch_max: int = 500
    paced_rate: int = 500
    paced_seconds: float = 20.0
    warmup_appends: int = 200
    grpc: bool = True
    proof_entries: int = 1_000_000
    proof_calls: int = 2_000
    export_entries: int = 100_000
    export_repeats: int = 3
    no_inputs_entries: int = 100_000
    startup_repeats: int = 3
    witness_rounds: int = 200


FULL = Plan()
QUICK = Plan(
    throughput_records=6_000,
    throughput_repeats=1,
    paced_seconds=2.0,
    warmup_appends=20,
    proof_entries=20_000,
    proof_calls=300,
    export_entries=5_000,
    export_repeats=1,
    no_inputs_entries=5_000,
    startup_repeats=1,
    witness_rounds=20,
)
