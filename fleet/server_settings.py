"""The fleet ServerApp's settings: the run config of ``flwr run`` (``[tool.flwr.app.config]``
of ``fleet/app/pyproject.toml``, overridden by ``roost fleet serve`` with ``--run-config``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet.protocol import DEFAULT_BASE_VERSION, DEFAULT_MODEL, HEAD_SIZE


@dataclass(frozen=True)
class ServerSettings:
    rounds: int = 3
    # Hubs that must be connected before the first round, and sampled each round.
    min_nodes: int = 4
    # The fewest hubs whose sum is released (t): each hub adds 1/t of the noise variance.
    min_participants: int = 4
    clip_norm: float = 1.0
    noise_multiplier: float = 1.0
    # The fleet budget of the global model, over all rounds.
    epsilon_budget: float = 10.0
    delta: float = 1e-5
    # SecAgg+: shares per hub (odd: see _check_secagg), shares needed to unmask, seconds a
    # stage waits for replies (a hub that does not answer in time is a dropout), clipping
    # range of quantization.
    secagg_num_shares: int = 5
    secagg_threshold: int = 3
    stage_timeout: float = 60.0
    clipping_range: float = 8.0
    model: str = DEFAULT_MODEL
    # The version of the model whose trunk the hubs train the head on (their active
    # model) and that the fleet's release is built from (docs/fleet.md, "The release").
    base_version: str = DEFAULT_BASE_VERSION
    head_size: int = HEAD_SIZE
    # Where each round's report (JSON lines) goes; empty: the log only.
    report_path: str = ""
    # Where every reply the ServerApp receives is described, arrays and all (JSON lines,
    # fleet/received.py); empty: not recorded.
    received_path: str = ""

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.min_nodes < 1 or self.head_size < 1:
            raise ValueError("rounds, min-nodes and head-size must be >= 1")
        if not 1 <= self.min_participants <= self.min_nodes:
            raise ValueError("min-participants must be in [1, min-nodes]")
        _check_secagg(self.secagg_num_shares, self.secagg_threshold)
        for name in ("clip_norm", "noise_multiplier", "epsilon_budget", "stage_timeout"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name.replace('_', '-')} must be a finite number > 0")
        if not 0 < self.delta < 1:
            raise ValueError("delta must be in (0, 1)")
        parts = self.base_version.split(".")
        if not 1 <= len(parts) <= 3 or not all(p.isdigit() for p in parts):
            raise ValueError("base-version must be a release version such as 1.0.0")

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> ServerSettings:
        """From Flower's run config (keys with dashes); unknown keys are refused."""
        names = {f.replace("_", "-"): f for f in cls.__dataclass_fields__}
        unknown = set(run_config) - set(names)
        if unknown:
            raise ValueError(f"unknown run config keys: {sorted(unknown)}")
        values: dict[str, Any] = {}
        for key, raw in run_config.items():
            kind = type(getattr(cls, names[key]))
            values[names[key]] = kind(raw)
        return cls(**values)

    @property
    def report_file(self) -> Path | None:
        return Path(self.report_path) if self.report_path else None

    @property
    def received_file(self) -> Path | None:
        return Path(self.received_path) if self.received_path else None


def _check_secagg(num_shares: int, threshold: int) -> None:
    """SecAgg+ shares and threshold that Flower 1.42 runs correctly for any number of hubs.

    Each hub's neighbours are the ``num_shares // 2`` hubs on either side of it in a ring,
    plus itself. Flower's ``SecAggPlusWorkflow.setup_stage`` sends the hubs
    ``SHARE_NUMBER = num_shares`` *before* it raises an even count to the next odd one
    for the ring: with an even count and more hubs than shares, each hub is told to cut
    ``num_shares`` Shamir shares for ``num_shares + 1`` neighbours, and ``secaggplus_mod``
    fails on the missing share (every hub errors in share keys, the round is lost). An
    odd count never gets raised, so what the hubs are told is what the ring uses.
    Flower refuses ``reconstruction_threshold >= num_shares`` and turns 1 into a fraction
    (all shares); a threshold of 1 would also let one share reveal a key.
    """
    if num_shares < 3 or num_shares % 2 == 0:
        raise ValueError(
            f"secagg-num-shares must be odd and >= 3 (got {num_shares}): Flower 1.42 tells"
            " the hubs an even count but builds the neighbour ring with one more, and"
            " share keys fails with more hubs than shares"
        )
    if not 2 <= threshold < num_shares:
        raise ValueError(
            f"secagg-threshold must be in [2, secagg-num-shares) (got {threshold} for"
            f" {num_shares} shares)"
        )
