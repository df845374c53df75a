"""Configuration of the update service (section ``[update]``, env ``ROOST_UPDATE_*``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.kit.config import ServiceConfig

DEFAULT_PORT = 50053


@dataclass(frozen=True)
class UpdateConfig(ServiceConfig):
    port: int = DEFAULT_PORT
    hub_id: str = "local"
    # The model registry (shared with inference, which reads it).
    registry_root: Path = Path("var/data/models")
    # On first start, install and activate the models shipped with Roost.
    bootstrap_shipped: bool = True
    # The TUF model repository: an http(s) URL or a directory; empty = none.
    tuf_source: str = ""
    # The repository's root.json, installed by the integrator (trust anchor).
    tuf_trusted_root: Path | None = None
    max_bundle_bytes: int = 64 * 1024 * 1024
    # Every fetch from the repository (see services/update/fetchers.py): an overall
    # deadline per refresh or download, a minimum rate after a grace period, a stall
    # timeout per socket read and a cap on every metadata file, whatever it declares.
    fetch_deadline_seconds: float = 120.0
    fetch_min_bytes_per_second: float = 4096.0
    fetch_grace_seconds: float = 10.0
    fetch_stall_seconds: float = 10.0
    max_metadata_bytes: int = 4 * 1024 * 1024
    # Peers.
    audit_target: str = "127.0.0.1:50052"
    inference_target: str = "127.0.0.1:50051"
    audit_deadline_seconds: float = 5.0
    # Health gate (see services/update/health.py).
    health_check_seconds: float = 2.0
    auto_rollback: bool = True
    min_compared: int = 200
    max_error_rate_increase: float = 0.01
    max_p99_ratio: float = 3.0
    min_agreement: float = 0.6
    # Below this p99 (both versions), latency ratios are not judged.
    latency_floor_seconds: float = 0.005
    # A p99 latency is judged only over this many session.run calls of each version.
    min_latency_calls: int = 50
    # Largest PSI of the candidate's output distribution against the active one's.
    max_output_psi: float = 0.25
    # Largest PSI of a classifier's confidence distribution (largest class probability
    # per row) against the active one's: calibration without labels. 0 (the default):
    # reported in the verdict, not judged — a DP-trained fleet release as accurate as
    # the active model differed by PSI 4.6 (test_fleet_release), too brittle to fail on.
    max_confidence_psi: float = 0.0
    # Outcomes: the personalization service scores active and candidate against the
    # homeowners' labels observed since the stage started (EvaluateVersions). Optional:
    # empty or unreachable, the gate runs without them.
    personalization_target: str = "127.0.0.1:50054"
    # How often those scores are refreshed (each refresh runs both versions on the labels).
    feedback_check_seconds: float = 30.0
    # Fewer labels than this (for either version) never fail a candidate.
    min_feedback: int = 20
    max_feedback_accuracy_drop: float = 0.05

    # A healthy candidate moves on by itself: shadow -> A/B (ab_share) -> active.
    auto_advance: bool = True
    shadow_minutes: float = 60.0
    ab_share: float = 0.25
    ab_minutes: float = 240.0

    def __post_init__(self) -> None:
        if not 0 < self.ab_share <= 1:
            raise ValueError("update.ab_share: must be in (0, 1]")
        if not self.health_check_seconds > 0:
            raise ValueError("update.health_check_seconds: must be > 0")
        if not 0 <= self.min_agreement <= 1:
            raise ValueError("update.min_agreement: must be in [0, 1]")
        if not self.feedback_check_seconds > 0:
            raise ValueError("update.feedback_check_seconds: must be > 0")
        if self.min_latency_calls < 1:
            raise ValueError("update.min_latency_calls: must be >= 1")
        if self.min_feedback < 1:
            raise ValueError("update.min_feedback: must be >= 1")
        if not 0 <= self.max_feedback_accuracy_drop <= 1:
            raise ValueError("update.max_feedback_accuracy_drop: must be in [0, 1]")
