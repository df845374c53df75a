"""SecAgg+ that survives a hub dropping out at any stage of a round.

Flower 1.42's ``SecAggPlusWorkflow`` recovers hubs that drop *after* sharing their keys
(stage 2 or 3), but not one that drops in stage 0 (setup) or 1 (share keys): its unmask
stage still counts the hub among the sampled nodes and, finding none of its secret
shares (it never distributed any), aborts the round ("Not enough shares to recover
secret"). Such a hub never contributed to any mask: the hubs that completed stage 1 are
the only ones whose keys, masks and shares exist. After stage 1 this workflow narrows the
round to them (sampled nodes and neighbour sets), which is what the unmask stage needs.
Found by killing a SuperNode in the setup stage (tests/integration/test_fleet_flower.py).
"""

from __future__ import annotations

from flwr.server import Grid, LegacyContext
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState


class DropoutTolerantSecAggPlus(SecAggPlusWorkflow):
    def share_keys_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        proceed: bool = super().share_keys_stage(grid, context, state)
        keyed = set(state.active_node_ids)  # completed setup and share keys
        state.sampled_node_ids = keyed
        state.nid_to_neighbours = {
            nid: neighbours & keyed
            for nid, neighbours in state.nid_to_neighbours.items()
            if nid in keyed
        }
        return proceed
