"""Roost's Flower ClientApp: a hub's part of a fleet round.

``HubClient.fit`` forwards the round's parameters and the global head to the hub's own
personalization service (``ComputeFederatedUpdate``, mTLS as the hub): the service
reserves the round in the privacy ledger, trains the head on the hub's store, clips the
delta to C and adds the hub's share of the noise. Only that noised delta is returned,
weighted 1, with no metrics. A refusal (FAILED_PRECONDITION: no budget, too few
examples, the homeowner's learning mode is local-only or paused) makes the hub sit the
round out (:class:`fleet.egress.SitOut`).

Mods, outermost first: :func:`fleet.egress.egress_audit_mod` (every reply on the audit
record before it leaves) and Flower's ``secaggplus_mod`` (the reply is masked).
"""

from __future__ import annotations

import logging
from typing import Final

import grpc
import numpy as np
from flwr.app import Context
from flwr.client import Client, ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.common import ConfigRecord, NDArrays, Scalar

from fleet import protocol
from fleet.egress import CONTRIBUTION, ROUND_STATE, SitOut, egress_audit_mod
from fleet.hub_node import HubNode
from roost.personalization.v1 import personalization_service_pb2 as pb
from roost.personalization.v1 import personalization_service_pb2_grpc as pb_grpc
from services.kit.auth import Role

logger = logging.getLogger("roost.fleet.client")

#: The local step trains the head on the hub's store; on a loaded 2-core box it may take a while.
COMPUTE_TIMEOUT: Final = 120.0


class HubClient(NumPyClient):
    def __init__(self, hub_context: Context) -> None:
        self._hub_context = hub_context

    def fit(
        self, parameters: NDArrays, config: dict[str, Scalar]
    ) -> tuple[NDArrays, int, dict[str, Scalar]]:
        node = HubNode.from_node_config(self._hub_context.node_config)
        round_id = str(config[protocol.ROUND_ID])
        model = str(config[protocol.MODEL])
        sigma = float(config[protocol.NOISE_MULTIPLIER])
        clip = float(config[protocol.CLIP_NORM])
        t = int(config[protocol.MIN_PARTICIPANTS])
        if t > node.max_min_participants:
            # Nothing is charged or computed: the hub would add too little noise.
            raise SitOut(
                round_id,
                f"the server asks min-participants {t}, above this hub's limit"
                f" {node.max_min_participants} ([fleet] max_min_participants)",
            )
        request = pb.ComputeFederatedUpdateRequest(
            model_name=model,
            round_id=round_id,
            clip_norm=clip,
            noise_multiplier=sigma,
            min_participants=t,
            global_parameters=np.asarray(parameters[0], "<f4").ravel().tobytes(),
        )
        with node.channel(Role.PERSONALIZATION) as ch:
            try:
                res = pb_grpc.PersonalizationServiceStub(ch).ComputeFederatedUpdate(
                    request, timeout=COMPUTE_TIMEOUT
                )
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    raise SitOut(round_id, str(e.details())) from None
                raise
        delta = np.frombuffer(res.noised_delta, "<f4").astype(np.float32)
        self._hub_context.state.config_records[ROUND_STATE] = ConfigRecord(
            {
                "round_id": round_id,
                "model": model,
                "model_version": res.model_version,
                "round_epsilon": float(res.round_epsilon),
                "epsilon_spent": float(res.epsilon_spent),
                "mechanism": f"gaussian sigma {sigma:g} C {clip:g} t {t} (hub share), SecAgg+",
                # What this hub puts into the sum before SecAgg+ masks it: the egress mod
                # records its digest and keeps it in the hub's own audit log (its inputs).
                CONTRIBUTION: res.noised_delta,
            }
        )
        logger.info(
            "hub %s: fleet round %s, delta computed (round epsilon %.4f, household %.4f)",
            node.hub_id,
            round_id,
            res.round_epsilon,
            res.epsilon_spent,
        )
        return [delta], 1, {}


def client_fn(context: Context) -> Client:
    return HubClient(context).to_client()


app = ClientApp(client_fn=client_fn, mods=[egress_audit_mod, secaggplus_mod])
