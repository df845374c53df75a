"""The fleet bench's ServerApp: Roost's own (``fleet.server_app.main``: FedAvg over
SecAgg+ with the fleet accountant) when run config ``bench-secagg`` is true, else the same
strategy over Flower's plain fit workflow, the baseline "without SecAgg+" that
``bench/fleet.py`` compares it with. The plain path exists only here: in it the server
receives every hub's noised delta, which Roost's fleet never does.
"""

from __future__ import annotations

import logging

import numpy as np
from flwr.app import Context
from flwr.common import FitRes, Parameters, Scalar, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.client_proxy import ClientProxy
from flwr.server.workflow import DefaultWorkflow

from fleet import server_app
from fleet.server_app import RoostFedAvg
from fleet.server_settings import ServerSettings

SECAGG_KEY = "bench-secagg"


class PlainRoostFedAvg(RoostFedAvg):
    """RoostFedAvg over plain replies: average them first (SecAgg+ hands over the
    average already), then release as RoostFedAvg does."""

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        if results:
            vectors = [parameters_to_ndarrays(r.parameters)[0] for _, r in results]
            mean = ndarrays_to_parameters([np.mean(vectors, axis=0).astype(np.float32)])
            for _, r in results:
                r.parameters = mean
        return super().aggregate_fit(server_round, results, failures)


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    secagg = bool(context.run_config.pop(SECAGG_KEY, True))
    if secagg:
        server_app.main(grid, context)
        return
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = ServerSettings.from_run_config(context.run_config)
    strategy = PlainRoostFedAvg(settings, run_tag=str(context.run_id))
    legacy = LegacyContext(
        context, config=ServerConfig(num_rounds=settings.rounds), strategy=strategy
    )
    try:
        DefaultWorkflow()(grid, legacy)
    except BaseException as e:
        strategy.finish(f"failed: {type(e).__name__}")
        raise
    strategy.finish("completed")
