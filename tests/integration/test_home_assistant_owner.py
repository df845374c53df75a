"""What the owner sees in a REAL Home Assistant (2025.4.4): the update entity tells the
truth about a signed release through shadow and A/B and skips it once rolled back; a
"that was wrong" shows on the decision entity and in the logbook; a failed button raises
a persistent notification with the reason.

Real mosquitto, real Roost services (audit, inference, update serving a signed TUF
repository that offers occupancy 1.1.0 with its own model card, personalization) and
the hub, on HA's broker. The rollout is moved to A/B with the admin identity, as
``roost models rollout`` would (the update service's own schedule waits an hour).
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cli.stack import Stack
from cli.tuf_repo import ModelRepository
from roost.common.v1 import common_pb2
from roost.inference.v1 import inference_service_pb2 as inf_pb
from roost.inference.v1 import inference_service_pb2_grpc as inf_grpc
from roost.update.v1 import update_service_pb2 as upd_pb
from roost.update.v1 import update_service_pb2_grpc as upd_grpc
from services.kit.auth import Role
from services.modelstore.bundle import pack_bundle
from tests.support.ha_entities import KINDS, VACANT, room_sensors, set_room
from tests.support.ha_roost import start_roost
from tests.support.home_assistant import HomeAssistant
from tests.support.metrics import metric
from tests.support.model_versions import OCCUPIED, occupancy_version
from tests.support.stacks import service_channel
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.home_assistant, pytest.mark.timeout(900)]

HUB_ID = "haowner"
NEW_VERSION = "1.1.0"
NOTES = "Fewer false 'occupied' at dusk: retrained with evening light readings."
CARD = f"# Model card: `occupancy` {NEW_VERSION}\n\n{NOTES}\n\n| | |\n|---|---|\n| a | b |\n"
E = "roost_hub"
MIN_COMPARED = 30  # shadow comparisons before the update service allows A/B
UPDATE = f"update.{E}_occupancy_model"


def _ha_options() -> dict[str, Any]:
    numbers, sensors, areas = room_sensors({"kitchen": "Kitchen"}, KINDS, "roostowner")
    return {
        "extra_config": {"input_number": numbers, "template": [{"sensor": sensors}]},
        "areas": areas,
    }


HA_OPTIONS = _ha_options()


def signed_release(home: Path) -> dict[str, str]:
    """A TUF repository offering occupancy 1.1.0 with its own card; the update
    service's environment for it."""
    model = occupancy_version(home, NEW_VERSION)
    (model / "MODEL_CARD.md").write_text(CARD)
    repo = ModelRepository.create(home / "repo", home / "keys")
    repo.publish("occupancy", pack_bundle(model, home / "bundle.tar").path, NEW_VERSION)
    shutil.copy(repo.root_path, home / "trusted-root.json")
    return {
        "ROOST_UPDATE_TUF_SOURCE": str(home / "repo"),
        "ROOST_UPDATE_TUF_TRUSTED_ROOT": str(home / "trusted-root.json"),
    }


@pytest.fixture(scope="module")
def roost(
    ha_env: tuple[Stack, HomeAssistant], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    _, ha = ha_env
    home = tmp_path_factory.mktemp("roost")
    (home / "tuf").mkdir()
    stack = start_roost(
        ha,
        home / "stack",
        hub_id=HUB_ID,
        actions="",
        service_env={
            Role.UPDATE: {
                **signed_release(home / "tuf"),
                "ROOST_UPDATE_HEALTH_CHECK_SECONDS": "0.5",
                "ROOST_UPDATE_MIN_COMPARED": str(MIN_COMPARED),
            }
        },
    )
    try:
        yield stack
    finally:
        stack.stop()


def wait_update(ha: HomeAssistant, predicate: Any, timeout: float = 30) -> dict[str, Any]:
    return ha.wait_state(UPDATE, predicate, timeout)


async def shadow_comparisons(stack: Stack) -> None:
    """Predictions as the hub makes them, until the shadow candidate was compared on
    ``MIN_COMPARED`` of them (a healthy verdict: the same weights)."""
    inference = inf_grpc.InferenceServiceStub(service_channel(stack, Role.INFERENCE, Role.HUB))
    update = upd_grpc.UpdateServiceStub(service_channel(stack, Role.UPDATE))
    tensor = common_pb2.Tensor(dtype=common_pb2.DATA_TYPE_FLOAT32, shape=[6], float_values=OCCUPIED)
    request = inf_pb.PredictRequest(
        model_name="occupancy", input=tensor, entity_id="occupancy.kitchen"
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for _ in range(10):
            await inference.Predict(request, timeout=5)
        status = await update.GetRolloutStatus(
            upd_pb.GetRolloutStatusRequest(model_name="occupancy"), timeout=5
        )
        if status.status.verdict.startswith("healthy"):
            return
    raise AssertionError(f"no healthy shadow verdict: {status.status.verdict}")


def notifications(ha: HomeAssistant) -> dict[str, dict[str, Any]]:
    found = ha.ws({"type": "persistent_notification/get"})
    return {n["notification_id"]: n for n in found}


async def test_a_signed_release_is_described_through_shadow_and_ab_then_skipped(
    ha: HomeAssistant, roost: Stack
) -> None:
    # Offered: a signed release with the notes its publisher signed, not installing.
    offered = await asyncio.to_thread(
        wait_update, ha, lambda s: s["attributes"].get("latest_version") == NEW_VERSION
    )
    attrs = offered["attributes"]
    assert offered["state"] == "on"
    assert (attrs["installed_version"], attrs["in_progress"]) == ("1.0.0", False)
    assert attrs["update_percentage"] is None
    assert attrs["release_summary"] == (
        f"**Signed release {NEW_VERSION}**: available; Install verifies it and starts a"
        f" shadow trial.\n\n{NOTES}"
    )
    assert (attrs["source"], attrs["rollout_stage"]) == ("signed release", "none")

    # Install: shadow. In progress, 0 % of rooms served, the stage in words.
    await asyncio.to_thread(ha.call_service, "update", "install", {"entity_id": UPDATE})
    shadow = await asyncio.to_thread(
        wait_update, ha, lambda s: s["attributes"].get("rollout_stage") == "shadow", 60
    )
    attrs = shadow["attributes"]
    assert (attrs["in_progress"], attrs["update_percentage"]) == (True, 0)
    assert attrs["release_summary"].startswith(
        f"**Signed release {NEW_VERSION}**: in shadow, beside 1.0.0"
    )
    assert attrs["release_summary"].endswith(NOTES)  # the installed card's notes
    assert attrs["source"] == "signed release"
    since = datetime.fromisoformat(attrs["stage_since"])
    assert abs((datetime.now(UTC) - since).total_seconds()) < 120

    # A/B for a quarter of the rooms (the admin's step, after a healthy shadow): 25 %.
    await shadow_comparisons(roost)
    admin = upd_grpc.UpdateServiceStub(service_channel(roost, Role.UPDATE, Role.ADMIN))
    await admin.StartRollout(
        upd_pb.StartRolloutRequest(
            model_name="occupancy", stage=upd_pb.ROLLOUT_STAGE_AB, candidate_share=0.25
        ),
        timeout=10,
    )
    ab = await asyncio.to_thread(
        wait_update, ha, lambda s: s["attributes"].get("rollout_stage") == "ab"
    )
    attrs = ab["attributes"]
    assert (attrs["in_progress"], attrs["update_percentage"]) == (True, 25)
    assert attrs["candidate_share"] == 0.25
    assert "in A/B: serves 25% of rooms, 1.0.0 the rest" in attrs["release_summary"]
    assert attrs["latest_version"] == NEW_VERSION

    # Roll back: 1.1.0 is skipped, not offered again (HA: up to date).
    await asyncio.to_thread(
        ha.call_service, "button", "press", {"entity_id": f"button.{E}_roll_back_occupancy"}
    )
    skipped = await asyncio.to_thread(
        wait_update, ha, lambda s: s["attributes"].get("rolled_back_version") == NEW_VERSION
    )
    attrs = skipped["attributes"]
    assert skipped["state"] == "off"
    assert attrs["latest_version"] == attrs["installed_version"] == "1.0.0"
    assert attrs["in_progress"] is False
    assert f"{NEW_VERSION} was rolled back and is skipped" in attrs["release_summary"]


def settled_decision(ha: HomeAssistant, entity_id: str, quiet: float) -> str:
    """The decision id ``entity_id`` shows once it has not changed for ``quiet`` seconds."""
    seen: dict[str, Any] = {"id": None, "since": time.monotonic()}

    def settled() -> str | None:
        current = ((ha.state(entity_id) or {}).get("attributes") or {}).get("decision_id")
        if current != seen["id"]:
            seen.update(id=current, since=time.monotonic())
            return None
        return current if time.monotonic() - seen["since"] >= quiet else None

    return wait_until(settled, 30, f"{entity_id}'s decision to settle", interval=0.2)


async def test_a_correction_shows_on_the_entity_and_in_the_logbook(
    ha: HomeAssistant, roost: Stack
) -> None:
    sensor = f"binary_sensor.{E}_occupancy_kitchen"
    await asyncio.to_thread(set_room, ha, "kitchen", VACANT)
    decided = await asyncio.to_thread(
        ha.wait_state,
        sensor,
        lambda s: s["state"] == "off" and "decision_id" in s["attributes"],
        30,
    )
    # Each value set may decide again (the hub also decided on HA's states at start):
    # correct the decision the entity settles on, once no newer one came for 3 s.
    decision_id = await asyncio.to_thread(settled_decision, ha, sensor, 3.0)
    decided = ha.state(sensor) or {}
    assert decided["attributes"]["feedback"] is None
    pressed = datetime.now(UTC)
    await asyncio.to_thread(
        ha.call_service, "button", "press", {"entity_id": f"button.{E}_occupancy_kitchen_was_wrong"}
    )
    corrected = await asyncio.to_thread(
        ha.wait_state, sensor, lambda s: s["attributes"].get("feedback") == "corrected by you", 20
    )
    attrs = corrected["attributes"]
    assert corrected["state"] == "on"  # the owner's label: occupied
    assert (attrs["decision_id"], attrs["label"]) == (decision_id, "vacant")
    assert attrs["corrected_label"] == "occupied"
    entry = await asyncio.to_thread(
        wait_until,
        lambda: next((e for e in ha.logbook(start=pressed) if e.get("name") == "Roost hub"), None),
        15,
        "the logbook's confirmation",
    )
    assert entry["message"] == (
        "recorded your correction of occupancy in kitchen: it was occupied, not vacant."
        " Roost learns from it."
    )
    assert metric(roost, "roost_hub_feedback_total", outcome="recorded") == 1


async def test_a_failed_button_raises_a_notification_with_the_reason(
    ha: HomeAssistant, roost: Stack
) -> None:
    # Nothing to roll back (no candidate, no previous version): the update service refuses.
    await asyncio.to_thread(
        ha.call_service, "button", "press", {"entity_id": f"button.{E}_roll_back_occupancy"}
    )
    key = f"roost_{HUB_ID}_occupancy_rollback"
    note = await asyncio.to_thread(
        wait_until, lambda: notifications(ha).get(key), 20, "the notification"
    )
    assert note["title"] == "Roost: Rolling back occupancy failed"
    assert note["message"] == (
        "Rolling back occupancy failed: update service: Rollback failed (FAILED_PRECONDITION)."
    )
    assert metric(roost, "roost_hub_ha_notices_total", kind="notification", outcome="sent") >= 1
