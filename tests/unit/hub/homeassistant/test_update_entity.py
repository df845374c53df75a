"""The update entity tells the truth: source, rollout step and share, notes, skipped."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from jinja2.sandbox import ImmutableSandboxedEnvironment

from hub.homeassistant.coordinator import Coordinator
from hub.homeassistant.entities import ModelInfo, model_update_component
from hub.homeassistant.fleet_entities import FleetStatus
from hub.homeassistant.settings import Settings
from hub.homeassistant.update_entity import MAX_SUMMARY, Release, UpdateView
from roost.common.v1 import common_pb2
from roost.update.v1 import update_service_pb2 as upd_pb

ACTIVE = Release("1.0.0", "shipped", "Room occupancy classifier.")
SIGNED = Release("1.1.0", "tuf", "Better at night.")
LOCAL = Release("1.0.0.1", "local", "Personalized on this hub from occupancy 1.0.0.")


def test_an_offered_signed_release_says_so_and_is_not_installing() -> None:
    s = UpdateView(ACTIVE, offered=SIGNED).state("occupancy")
    assert (s["installed_version"], s["latest_version"]) == ("1.0.0", "1.1.0")
    assert (s["in_progress"], s["update_percentage"]) == (False, None)
    assert s["release_summary"].startswith("**Signed release 1.1.0**: available")
    assert s["release_summary"].endswith("\n\nBetter at night.")
    assert "personalized" not in s["release_summary"].lower()
    assert s["attributes"]["source"] == "signed release"
    assert s["attributes"]["rollout_stage"] == "none"


def test_a_local_candidate_is_described_as_personalized() -> None:
    s = UpdateView(ACTIVE, candidate=LOCAL, stage="staged").state("occupancy")
    assert s["latest_version"] == "1.0.0.1"
    assert s["release_summary"].startswith("**Personalized on this hub 1.0.0.1**: staged")
    assert s["attributes"]["source"] == "personalized on this hub"
    assert s["in_progress"] is False  # staged: Install starts its shadow trial


def test_shadow_and_ab_show_the_stage_and_the_share_of_rooms() -> None:
    shadow = UpdateView(ACTIVE, candidate=SIGNED, stage="shadow", stage_since="t0")
    s = shadow.state("occupancy")
    assert (s["in_progress"], s["update_percentage"]) == (True, 0)
    assert "in shadow, beside 1.0.0" in s["release_summary"]
    assert s["attributes"] | {"health_verdict": ""} == {
        "source": "signed release",
        "rollout_stage": "shadow",
        "candidate_share": 0.0,
        "stage_since": "t0",
        "health_verdict": "",
        "rolled_back_version": "",
    }
    ab = UpdateView(ACTIVE, candidate=SIGNED, stage="ab", share=0.25).state("occupancy")
    assert (ab["in_progress"], ab["update_percentage"]) == (True, 25)
    assert "in A/B: serves 25% of rooms, 1.0.0 the rest" in ab["release_summary"]
    assert ab["attributes"]["candidate_share"] == 0.25


def test_a_rolled_back_version_is_skipped_until_a_newer_release() -> None:
    skipped = UpdateView(ACTIVE, rolled_back="1.1.0", offered=SIGNED)
    s = skipped.state("occupancy")
    assert s["latest_version"] == s["installed_version"] == "1.0.0"  # HA: up to date
    assert "1.1.0 was rolled back and is skipped" in s["release_summary"]
    assert s["attributes"]["rolled_back_version"] == "1.1.0"
    assert skipped.offer() is None
    # An older offer is skipped too; a newer one is offered.
    assert UpdateView(ACTIVE, rolled_back="1.2.0", offered=SIGNED).offer() is None
    newer = Release("1.2.0", "tuf")
    assert UpdateView(ACTIVE, rolled_back="1.1.0", offered=newer).offer() == newer


def test_the_summary_fits_home_assistant() -> None:
    long = Release("1.1.0", "tuf", "x" * 1000)
    for view in (
        UpdateView(ACTIVE, offered=long),
        UpdateView(ACTIVE, candidate=long, stage="ab", share=0.5),
        UpdateView(ACTIVE, rolled_back="9.0.0", offered=Release("8.0.0", "tuf", "y" * 999)),
    ):
        assert len(view.state("m")["release_summary"]) <= MAX_SUMMARY


def test_an_older_or_installed_offer_is_not_offered() -> None:
    assert UpdateView(Release("1.1.0", "tuf"), offered=SIGNED).offer() is None
    assert UpdateView(Release("1.10.0", "tuf"), offered=Release("1.9.0", "tuf")).offer() is None


class Update:
    """An update service in A/B with a signed candidate; the last rollback named."""

    def __init__(self, stage: int, share: float, rolled_back: str = "") -> None:
        self.stage, self.share, self.rolled_back = stage, share, rolled_back
        self.calls: list[tuple[str, str]] = []

    async def ListVersions(self, request: Any, timeout: float) -> Any:
        def version(v: str, slot: int, source: int, notes: str) -> upd_pb.ModelVersion:
            ref = common_pb2.ModelRef(name="occupancy", version=v)
            return upd_pb.ModelVersion(model=ref, slot=slot, source=source, release_notes=notes)

        versions = [version("1.0.0", upd_pb.SLOT_ACTIVE, upd_pb.SOURCE_SHIPPED, "Shipped.")]
        if self.stage != upd_pb.ROLLOUT_STAGE_UNSPECIFIED:
            versions.append(
                version("1.1.0", upd_pb.SLOT_CANDIDATE, upd_pb.SOURCE_TUF, "Better at night.")
            )
        return upd_pb.ListVersionsResponse(versions=versions)

    async def GetRolloutStatus(self, request: Any, timeout: float) -> Any:
        status = upd_pb.RolloutStatus(
            model_name="occupancy",
            stage=self.stage,
            candidate_share=self.share,
            verdict="healthy: 120 inputs compared",
            rolled_back_version=self.rolled_back,
            stage_started_at=Timestamp(seconds=1_800_000_000),
        )
        return upd_pb.GetRolloutStatusResponse(status=status)

    async def CheckForUpdates(self, request: Any, timeout: float) -> Any:
        ref = common_pb2.ModelRef(name="occupancy", version="1.1.0")
        return upd_pb.CheckForUpdatesResponse(
            updates=[upd_pb.AvailableUpdate(model=ref, release_notes="Better at night.")]
        )

    async def Stage(self, request: Any, timeout: float) -> Any:
        self.calls.append(("Stage", request.version))
        return upd_pb.StageResponse()

    async def StartRollout(self, request: Any, timeout: float) -> Any:
        self.calls.append(("StartRollout", ""))
        return upd_pb.StartRolloutResponse()


def poll(update: Update) -> tuple[dict[str, Any], Coordinator]:
    pushed: dict[str, bytes] = {}
    c = Coordinator(
        hub_id="home-1",
        models=[ModelInfo("occupancy", ("vacant", "occupied"), "1.0.0")],
        settings=Settings(),
        inference=None,  # type: ignore[arg-type]
        personalization=None,
        update=update,  # type: ignore[arg-type]
        fleet=FleetStatus(enabled=False, audit=None),
        push=lambda topic, payload, retain: pushed.__setitem__(topic, payload),
        spawn=lambda coro: None,
    )

    async def go() -> None:
        await c.check_updates()
        await c.poll_update("occupancy")

    asyncio.run(go())
    return json.loads(pushed["roost/home-1/ha/state/occupancy_update"]), c


def test_the_coordinator_reads_stage_share_source_and_notes_from_the_update_service() -> None:
    doc, _ = poll(Update(upd_pb.ROLLOUT_STAGE_AB, 0.25))
    assert (doc["latest_version"], doc["update_percentage"], doc["in_progress"]) == (
        "1.1.0",
        25,
        True,
    )
    assert doc["release_summary"].startswith("**Signed release 1.1.0**: in A/B")
    assert doc["release_summary"].endswith("Better at night.")
    assert doc["attributes"]["stage_since"] == "2027-01-15T08:00:00Z"
    assert doc["attributes"]["health_verdict"] == "healthy: 120 inputs compared"


def test_after_a_rollback_install_does_not_stage_the_skipped_version_again() -> None:
    update = Update(upd_pb.ROLLOUT_STAGE_UNSPECIFIED, 0.0, rolled_back="1.1.0")
    doc, c = poll(update)
    assert doc["latest_version"] == "1.0.0"
    assert doc["attributes"]["rolled_back_version"] == "1.1.0"
    asyncio.run(c.install("occupancy"))
    assert ("Stage", "1.1.0") not in update.calls
    # Without the rollback the same offer is staged.
    update = Update(upd_pb.ROLLOUT_STAGE_UNSPECIFIED, 0.0)
    _, c = poll(update)
    asyncio.run(c.install("occupancy"))
    assert update.calls == [("Stage", "1.1.0"), ("StartRollout", "")]


def test_the_entity_templates_give_home_assistant_its_keys_only() -> None:
    """HA's MQTT update schema refuses unknown keys: the state template passes its own
    (and null update_percentage) only; the attributes come from the same document."""
    env = ImmutableSandboxedEnvironment()
    c = model_update_component("home-1", "occupancy")
    assert c["json_attributes_topic"] == c["state_topic"]
    doc = UpdateView(ACTIVE, candidate=SIGNED, stage="ab", share=0.25).state("occupancy")
    value_json = json.loads(json.dumps(doc))
    state = json.loads(env.from_string(c["value_template"]).render(value_json=value_json))
    assert set(state) == set(doc) - {"attributes"}
    assert state["update_percentage"] == 25
    offered = json.loads(json.dumps(UpdateView(ACTIVE, offered=SIGNED).state("occupancy")))
    state = json.loads(env.from_string(c["value_template"]).render(value_json=offered))
    assert state["update_percentage"] is None
    attributes = env.from_string(c["json_attributes_template"]).render(value_json=value_json)
    assert json.loads(attributes) == doc["attributes"]
