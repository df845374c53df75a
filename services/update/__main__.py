"""``python -m services.update``: the update service process."""

from __future__ import annotations

import asyncio
import functools
import logging

from models.manifest import shipped_models_dir
from roost.audit.v1 import audit_service_pb2_grpc as audit_grpc
from roost.update.v1 import update_service_pb2 as pb
from roost.update.v1 import update_service_pb2_grpc as pb_grpc
from services.kit.app import App
from services.kit.auth import Role
from services.kit.certs import LOCAL_CANDIDATE_PUB
from services.kit.config import load_config
from services.modelstore import local_key
from services.modelstore.registry import Registry
from services.update.config import UpdateConfig
from services.update.fetchers import FetchLimits
from services.update.health import HealthPolicy, RolloutSchedule
from services.update.rollout import run_health_gate
from services.update.servicer import POLICY, UpdateServicer
from services.update.status import InferenceStatus, PersonalizationFeedback
from services.update.trail import Trail
from services.update.tuf_client import ModelUpdater

logger = logging.getLogger("services.update")


def make_updater(config: UpdateConfig) -> ModelUpdater | None:
    if not config.tuf_source:
        logger.info("no model repository configured: releases cannot be fetched")
        return None
    if config.tuf_trusted_root is None:
        raise ValueError("update.tuf_trusted_root: required with update.tuf_source")
    return ModelUpdater(
        config.data_dir / "tuf" / "metadata",
        config.data_dir / "tuf" / "cache",
        config.tuf_source,
        trusted_root=config.tuf_trusted_root,
        max_bundle_bytes=config.max_bundle_bytes,
        limits=FetchLimits(
            deadline_seconds=config.fetch_deadline_seconds,
            min_bytes_per_second=config.fetch_min_bytes_per_second,
            grace_seconds=config.fetch_grace_seconds,
            stall_seconds=config.fetch_stall_seconds,
            max_metadata_bytes=config.max_metadata_bytes,
        ),
    )


async def setup(config: UpdateConfig, app: App) -> None:
    """The registry (bootstrapped with the shipped models if configured), the channels
    to audit, inference and personalization, the servicer and its health gate."""
    registry = Registry(config.registry_root)
    await asyncio.to_thread(registry.sweep)  # crash leftovers; we are the one writer
    if config.bootstrap_shipped:
        done = await asyncio.to_thread(registry.bootstrap, shipped_models_dir())
        if done:
            logger.info("registry bootstrapped with the shipped models: %s", done)
    audit_channel = app.peer(Role.AUDIT, config.audit_target)
    inference_channel = app.peer(Role.INFERENCE, config.inference_target)
    feedback: PersonalizationFeedback | None = None
    if config.personalization_target:
        feedback = PersonalizationFeedback(
            app.peer(Role.PERSONALIZATION, config.personalization_target),
            refresh_seconds=config.feedback_check_seconds,
        )
    else:
        logger.info("no personalization service configured: the health gate has no labels")
    updater = await asyncio.to_thread(make_updater, config)
    if updater is not None:
        await asyncio.to_thread(updater.sweep)
    public_path = config.certs_dir / LOCAL_CANDIDATE_PUB
    public = local_key.load_public(public_path) if public_path.is_file() else None
    servicer = UpdateServicer(
        registry,
        Trail(
            audit_grpc.AuditServiceStub(audit_channel),
            config.hub_id,
            config.audit_deadline_seconds,
        ),
        updater=updater,
        status=InferenceStatus(inference_channel),
        local_public_key=public,
        max_bundle_bytes=config.max_bundle_bytes,
        health_policy=HealthPolicy(
            min_compared=config.min_compared,
            max_error_rate_increase=config.max_error_rate_increase,
            max_p99_ratio=config.max_p99_ratio,
            min_agreement=config.min_agreement,
            latency_floor_seconds=config.latency_floor_seconds,
            min_latency_calls=config.min_latency_calls,
            max_output_psi=config.max_output_psi,
            max_confidence_psi=config.max_confidence_psi,
            min_feedback=config.min_feedback,
            max_feedback_accuracy_drop=config.max_feedback_accuracy_drop,
        ),
        feedback=feedback,
        schedule=RolloutSchedule(
            enabled=config.auto_advance,
            shadow_seconds=config.shadow_minutes * 60,
            ab_share=config.ab_share,
            ab_seconds=config.ab_minutes * 60,
        ),
    )
    if config.auto_rollback:
        app.background(
            run_health_gate(servicer.rollout.check_health, config.health_check_seconds),
            name="update-health-gate",
        )
    app.register(
        pb.DESCRIPTOR.services_by_name["UpdateService"],
        servicer,
        pb_grpc.add_UpdateServiceServicer_to_server,
        POLICY,
    )


def main() -> None:
    config = load_config(UpdateConfig, "update")
    App(config, Role.UPDATE, functools.partial(setup, config)).run()


if __name__ == "__main__":
    main()
