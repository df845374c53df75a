"""Roost's Flower ServerApp: FedAvg of a model head over SecAgg+, with the fleet accountant.

The server only ever holds the masked sum: Flower's ``SecAggPlusWorkflow`` (under the
legacy ``DefaultWorkflow``) unmasks the *sum* of the hubs' quantized vectors and hands
:class:`RoostFedAvg` their average. What each hub sends is its clipped delta plus its
share of the Gaussian noise (ComputeFederatedUpdate), each weighted 1 (``num_examples`` 1,
``max_weight`` 1): a data-dependent weight would break the clip's bound.

Each round: the accountant is asked first (one more round over the fleet budget: no hub
is asked, the run stops); the average delta is released only when at least
``min_participants`` hubs are in it (fewer would carry less than sigma * C of noise);
then the global head moves by it and the round's report (cumulative epsilon at delta) is
logged and appended to ``report-path``. With ``received-path`` every reply the ServerApp
receives is described there, arrays and all (``fleet/received.py``). When the run ends
(completed or failed) a last line says so, with the model and base version: ``roost fleet
serve`` waits for it to publish the release (``cli/fleet_release.py``).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import numpy as np
from flwr.app import Context
from flwr.common import (
    FitIns,
    FitRes,
    NDArrays,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow

from fleet import protocol
from fleet.accountant import FleetAccountant
from fleet.received import ReceivedLog, RecordingGrid
from fleet.secagg import DropoutTolerantSecAggPlus
from fleet.server_settings import ServerSettings

logger = logging.getLogger("roost.fleet.server")


class RoostFedAvg(FedAvg):
    """FedAvg of deltas: the global head moves by the (securely aggregated) average delta."""

    def __init__(self, settings: ServerSettings, run_tag: str) -> None:
        self.settings = settings
        self.run_tag = run_tag
        self.accountant = FleetAccountant(
            settings.noise_multiplier, settings.epsilon_budget, settings.delta
        )
        self.global_head = np.zeros(settings.head_size, np.float32)
        self._round_started = time.monotonic()
        self.stopped = False
        self.released = 0
        super().__init__(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_fit_clients=settings.min_nodes,
            min_evaluate_clients=0,
            min_available_clients=settings.min_nodes,
            initial_parameters=ndarrays_to_parameters([self.global_head]),
            on_fit_config_fn=self._fit_config,
        )

    def _fit_config(self, server_round: int) -> dict[str, Scalar]:
        s = self.settings
        return {
            protocol.ROUND_ID: f"{self.run_tag}-{server_round}",
            protocol.MODEL: s.model,
            protocol.CLIP_NORM: s.clip_norm,
            protocol.NOISE_MULTIPLIER: s.noise_multiplier,
            protocol.MIN_PARTICIPANTS: s.min_participants,
        }

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        if self.stopped or not self.accountant.allows_next():
            if not self.stopped:
                logger.warning(
                    "round %d: the fleet budget (epsilon %.3g at delta %.3g) is spent after"
                    " %d rounds (epsilon %.4g): stopping",
                    server_round,
                    self.settings.epsilon_budget,
                    self.settings.delta,
                    self.accountant.rounds,
                    self.accountant.epsilon,
                )
                self._report({"round": server_round, "stopped": "fleet budget spent"})
            self.stopped = True
            return []
        self._round_started = time.monotonic()
        return super().configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        n = len(results)
        if n < self.settings.min_participants:
            logger.warning(
                "round %d: %d hubs in the sum, fewer than min-participants %d: not released",
                server_round,
                n,
                self.settings.min_participants,
            )
            self._report({"round": server_round, "participants": n, "released": False})
            return None, {}
        # SecAgg+ gave every result the same parameters: the average of the hubs' vectors.
        average: NDArrays = parameters_to_ndarrays(results[0][1].parameters)
        delta = np.asarray(average[0], np.float32).ravel()
        self.global_head = (self.global_head + delta).astype(np.float32)
        epsilon = self.accountant.record_round()
        self.released += 1
        seconds = time.monotonic() - self._round_started
        logger.info(
            "round %d: %d hubs, %d failures, %.1fs; global model epsilon %.4f at delta %.3g",
            server_round,
            n,
            len(failures),
            seconds,
            epsilon,
            self.settings.delta,
        )
        self._report(
            {
                "round": server_round,
                "participants": n,
                "released": True,
                "seconds": round(seconds, 3),
                "epsilon": epsilon,
                "delta": self.settings.delta,
                "noise_multiplier": self.settings.noise_multiplier,
                "clip_norm": self.settings.clip_norm,
                "head": [float(v) for v in self.global_head],
            }
        )
        return ndarrays_to_parameters([self.global_head]), {"epsilon": epsilon}

    def finish(self, outcome: str) -> None:
        """The run's last report line: how it ended, what it was built on."""
        self._report(
            {
                "ended": outcome,
                "model": self.settings.model,
                "base_version": self.settings.base_version,
                "released_rounds": self.released,
            }
        )

    def _report(self, line: dict[str, Any]) -> None:
        path = self.settings.report_file
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(json.dumps({"run": self.run_tag, **line}) + "\n")


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = ServerSettings.from_run_config(context.run_config)
    if settings.report_file is not None:
        # flwr-serverapp's own output goes to the SuperLink's log store; keep a copy.
        handler = logging.FileHandler(settings.report_file.with_suffix(".log"))
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(handler)
        logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per API call
    if settings.received_file is not None:
        grid = RecordingGrid(grid, ReceivedLog(settings.received_file))
    strategy = RoostFedAvg(settings, run_tag=str(context.run_id))
    legacy = LegacyContext(
        context, config=ServerConfig(num_rounds=settings.rounds), strategy=strategy
    )
    workflow = DefaultWorkflow(
        fit_workflow=DropoutTolerantSecAggPlus(
            num_shares=settings.secagg_num_shares,
            reconstruction_threshold=settings.secagg_threshold,
            max_weight=1.0,
            clipping_range=settings.clipping_range,
            timeout=settings.stage_timeout,
        )
    )
    try:
        workflow(grid, legacy)
    except BaseException as e:
        strategy.finish(f"failed: {type(e).__name__}")
        raise
    strategy.finish("completed")
