"""ComputeFederatedUpdate: one fleet round on this hub, charged before it is computed.

Order, each step refusing before the next: the request's parameters are checked; the
model must be a fleet family with an active version; the ledger is cross-checked with
the audit log and retention enforced at the ledger's time (as before a training run);
enough examples must be stored; the round's mechanism is reserved (over budget: the hub
sits the round out, FailedPrecondition, nothing computed); then the head is trained
locally, the delta clipped and noised (:mod:`.federated`), and the reservation committed.
Only the noised delta leaves this service.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import Any

import numpy as np

from roost.personalization.v1 import personalization_service_pb2 as pb
from services.kit.errors import FailedPrecondition, InvalidArgument
from services.modelstore.reader import RegistryReader
from services.personalization.accounting import mechanism_epsilon
from services.personalization.config import PersonalizationConfig
from services.personalization.federated import RoundParams, encode, noised_delta, reserve_round
from services.personalization.federated_train import HEADS, local_head_delta
from services.personalization.job_manager import SCOPE, JobManager
from services.personalization.ledger import PrivacyLedger
from services.personalization.store import ExampleStore

logger = logging.getLogger(__name__)

#: A head is small; a request claiming more is refused before it is parsed.
MAX_GLOBAL_PARAMETERS = 1 << 20


class FleetRounds:
    def __init__(
        self,
        config: PersonalizationConfig,
        *,
        manager: JobManager,
        store: ExampleStore,
        ledger: PrivacyLedger,
        registry: RegistryReader,
    ) -> None:
        self._config = config
        self._manager = manager
        self._store = store
        self._ledger = ledger
        self._registry = registry
        self._lock = asyncio.Lock()
        self._rng = np.random.default_rng()  # fresh OS entropy: the noise is not predictable

    async def compute(self, request: pb.ComputeFederatedUpdateRequest) -> Any:
        params = RoundParams(
            request.round_id,
            float(request.clip_norm),
            float(request.noise_multiplier),
            int(request.min_participants),
        )
        raw = request.global_parameters
        if not raw or len(raw) % 4 or len(raw) > 4 * MAX_GLOBAL_PARAMETERS:
            raise InvalidArgument("global_parameters: float32 little-endian values required")
        global_head = np.frombuffer(raw, dtype="<f4").astype(np.float32)
        model = request.model_name
        active, manifest = await asyncio.to_thread(self._manager.supported_manifest, model)
        if manifest.name not in HEADS:
            raise FailedPrecondition(f"fleet learning supports {', '.join(HEADS)}")
        async with self._lock:
            at = await self._manager.ready_for_a_run()
            labels, shape = manifest.output_labels, manifest.input.shape
            x, y = await asyncio.to_thread(self._store.load, model, labels, shape)
            if len(y) < self._config.min_examples:
                raise FailedPrecondition(
                    f"model {model}: a fleet round needs at least {self._config.min_examples}"
                    f" labelled examples; {len(y)} are stored"
                )
            reservation = await asyncio.to_thread(
                partial(
                    reserve_round,
                    self._ledger,
                    SCOPE,
                    params,
                    privacy_unit=self._manager.privacy_unit,
                    now=at,
                )
            )
            onnx = self._registry.version_dir(model, active) / manifest.file
            delta = await asyncio.to_thread(
                local_head_delta, onnx, manifest.name, global_head, x, y
            )
            sent = noised_delta(delta, params, self._rng)
            await asyncio.to_thread(self._ledger.commit, reservation.id, steps_done=1)
        mech = reservation.mechanism
        round_eps = await asyncio.to_thread(
            mechanism_epsilon,
            mech.noise_multiplier,
            mech.sample_rate,
            mech.steps,
            reservation.delta,
            self._ledger.policy_for(SCOPE).accountant,
        )
        logger.info(
            "fleet round %s: noised delta computed (scope %s epsilon -> %.4f)",
            params.round_id,
            SCOPE,
            reservation.epsilon_after,
        )
        return pb.ComputeFederatedUpdateResponse(
            noised_delta=encode(sent),
            epsilon_spent=reservation.epsilon_after,
            round_epsilon=round_eps,
            reservation_id=reservation.id,
            model_version=active,
        )
