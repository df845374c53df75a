"""Which models the hub can feed: asked of the inference service at start-up."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import grpc

from hub.homeassistant.entities import ModelInfo
from hub.windows import SPEC_IDS as HOME_SPEC_IDS
from models.features import FeatureSpec, spec_by_id
from roost.inference.v1 import inference_service_pb2 as inf_pb
from roost.inference.v1 import inference_service_pb2_grpc as inf_grpc
from services.kit.peers import is_retryable, peer_error

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModels:
    """What the hub can feed: per-area FeatureSpec models and home-wide event models."""

    specs: dict[str, FeatureSpec]
    home_models: tuple[str, ...]
    # Output labels and version per model (Home Assistant entities).
    info: tuple[ModelInfo, ...] = ()


async def discover_models(
    stub: inf_grpc.InferenceServiceAsyncStub, stop: asyncio.Event
) -> ServedModels:
    """Ask inference which models it serves (retrying until it answers).

    An outage is waited out quietly; a refusal (e.g. a certificate of the wrong role)
    is logged as an error, since only an operator can fix it, and retried slowly."""
    delay = 0.1
    while not stop.is_set():
        try:
            specs: dict[str, FeatureSpec] = {}
            home: list[str] = []
            info: list[ModelInfo] = []
            token = ""
            while True:
                resp: inf_pb.ListModelsResponse = await stub.ListModels(
                    inf_pb.ListModelsRequest(page_token=token), timeout=2.0
                )
                for m in resp.models:
                    if m.feature_spec in HOME_SPEC_IDS:
                        home.append(m.model.name)
                        info.append(ModelInfo(m.model.name, tuple(m.output_names), m.model.version))
                        continue
                    try:
                        specs[m.model.name] = spec_by_id(m.feature_spec)
                    except (KeyError, ImportError) as e:
                        log.warning(
                            "model %s is served but not used by the hub: %s", m.model.name, e
                        )
                        continue
                    info.append(ModelInfo(m.model.name, tuple(m.output_names), m.model.version))
                token = resp.next_page_token
                if not token:
                    return ServedModels(specs, tuple(home), tuple(info))
        except grpc.aio.AioRpcError as e:
            if is_retryable(e):
                log.info("waiting for the inference service (%s)", e.code().name)
            else:
                log.error("%s; retrying", peer_error(e, "inference", "ListModels"))
                delay = 2.0
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
    return ServedModels({}, ())
