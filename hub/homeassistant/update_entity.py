"""What a model's Home Assistant update entity shows, from the update service's status.

The entity tells the owner, in its release summary and attributes:

* **where the version comes from**: a signed release of the model repository (TUF), a
  candidate personalized on this hub, or the version shipped with Roost;
* **how far its rollout is**: offered, staged, in shadow (runs beside the active
  version, serves no room: 0 %) or in A/B (the share of rooms it serves, as HA's
  ``update_percentage``); HA shows "installing" only while a rollout runs;
* **its release notes**: the paragraph under its model card's title (signed with the
  release in the TUF metadata, or read from the installed card);
* **a rolled-back version is skipped**: the update service names the version last
  rolled back (by the owner or its health gate); it is not offered again, only a newer
  release is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from roost.update.v1 import update_service_pb2 as upd_pb

# Home Assistant shows at most 255 characters of release summary.
MAX_SUMMARY = 255
SOURCES = {
    upd_pb.SOURCE_TUF: "tuf",
    upd_pb.SOURCE_LOCAL: "local",
    upd_pb.SOURCE_SHIPPED: "shipped",
}
SOURCE_TEXT = {
    "tuf": "Signed release",
    "local": "Personalized on this hub",
    "shipped": "Shipped with Roost",
    "": "Version",
}
STAGES = {
    upd_pb.ROLLOUT_STAGE_STAGED: "staged",
    upd_pb.ROLLOUT_STAGE_SHADOW: "shadow",
    upd_pb.ROLLOUT_STAGE_AB: "ab",
}


def version_key(version: str) -> tuple[int, ...]:
    """A dotted version for ordering ("1.10.0" after "1.9.9"; non-digits count 0)."""
    parts = []
    for p in version.split("."):
        digits = re.match(r"\d+", p)
        parts.append(int(digits.group()) if digits else 0)
    return tuple(parts)


@dataclass(frozen=True)
class Release:
    """A version the entity can show: where it comes from and its notes."""

    version: str
    source: str = ""  # tuf, local, shipped ("" unknown)
    notes: str = ""

    @classmethod
    def of(cls, v: upd_pb.ModelVersion) -> Release:
        return cls(v.model.version, SOURCES.get(v.source, ""), v.release_notes)

    @classmethod
    def offered(cls, u: upd_pb.AvailableUpdate) -> Release:
        return cls(u.model.version, "tuf", u.release_notes)


@dataclass(frozen=True)
class UpdateView:
    """One model's versions and rollout as the update service reported them."""

    installed: Release
    candidate: Release | None = None
    stage: str = "none"  # none, staged, shadow, ab
    share: float = 0.0
    stage_since: str = ""
    verdict: str = ""
    rolled_back: str = ""
    # The newest signed release newer than installed (CheckForUpdates), if any.
    offered: Release | None = None

    @property
    def rolling_out(self) -> bool:
        return self.candidate is not None and self.stage in ("shadow", "ab")

    def skipped(self) -> bool:
        """The offered release is the rolled-back version (or older): not offered."""
        return bool(
            self.offered
            and self.rolled_back
            and version_key(self.offered.version) <= version_key(self.rolled_back)
        )

    def offer(self) -> Release | None:
        """The signed release Install would stage, unless a candidate is there already."""
        if self.candidate is not None or self.offered is None or self.skipped():
            return None
        if version_key(self.offered.version) <= version_key(self.installed.version):
            return None
        return self.offered

    def latest(self) -> Release:
        return self.candidate or self.offer() or self.installed

    def state(self, model: str) -> dict[str, Any]:
        """The entity's state document (HA's MQTT update JSON, plus ``attributes``)."""
        latest = self.latest()
        percentage = None
        if self.rolling_out:
            percentage = round(self.share * 100) if self.stage == "ab" else 0
        return {
            "installed_version": self.installed.version,
            "latest_version": latest.version,
            "in_progress": self.rolling_out,
            "update_percentage": percentage,
            "title": f"Roost {model} model",
            "release_summary": self.summary(latest),
            "attributes": {
                "source": SOURCE_TEXT[latest.source].lower(),
                "rollout_stage": self.stage if self.candidate is not None else "none",
                "candidate_share": round(self.share, 4) if self.stage == "ab" else 0.0,
                "stage_since": self.stage_since if self.candidate is not None else "",
                "health_verdict": self.verdict if self.candidate is not None else "",
                "rolled_back_version": self.rolled_back,
            },
        }

    def summary(self, latest: Release) -> str:
        """Source and version, the rollout step in plain words, then the notes."""
        head = f"**{SOURCE_TEXT[latest.source]} {latest.version}**: {self._step(latest)}"
        if self.skipped() and self.offered is not None:
            head += (
                f" {self.offered.version} was rolled back and is skipped: it is not"
                " offered again, a newer release will be."
            )
        text = f"{head}\n\n{latest.notes}" if latest.notes else head
        return text if len(text) <= MAX_SUMMARY else text[: MAX_SUMMARY - 1] + "…"

    def _step(self, latest: Release) -> str:
        installed = self.installed.version
        if latest is self.installed:
            return "installed."
        if self.stage == "shadow":
            return f"in shadow, beside {installed}: compared on every reading, serves no room yet."
        if self.stage == "ab":
            return f"in A/B: serves {round(self.share * 100)}% of rooms, {installed} the rest."
        if self.stage == "staged":
            return "staged; Install starts its shadow trial."
        return "available; Install verifies it and starts a shadow trial."
