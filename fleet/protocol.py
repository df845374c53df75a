"""What the Roost ServerApp and ClientApp agree on: the keys of a round's fit config and of
a SuperNode's node config.

The ServerApp puts the round's privacy parameters into each FitIns config; the ClientApp
forwards them, unchanged, to the hub's ``ComputeFederatedUpdate``, which refuses anything
malformed before it charges the ledger. A SuperNode's ``--node-config`` names the hub's
own services (personalization, audit), its mTLS certificates and the SuperLink (for the
egress record).
"""

from __future__ import annotations

from typing import Final

# FitIns config keys (server -> hub).
ROUND_ID: Final = "roost.round_id"
MODEL: Final = "roost.model"
CLIP_NORM: Final = "roost.clip_norm"
NOISE_MULTIPLIER: Final = "roost.noise_multiplier"
MIN_PARTICIPANTS: Final = "roost.min_participants"

# Node config keys (`flower-supernode --node-config`).
NODE_HUB_ID: Final = "hub-id"
NODE_CERTS_DIR: Final = "certs-dir"
NODE_PERSONALIZATION: Final = "personalization-target"
NODE_AUDIT: Final = "audit-target"
NODE_SUPERLINK: Final = "superlink"
# The largest min-participants (t) the hub accepts from the server: each hub adds only
# 1/t of the noise variance, so a server claiming a large t it does not deliver would
# leave each hub's delta under-noised. Optional; default DEFAULT_MAX_T.
NODE_MAX_T: Final = "max-min-participants"
DEFAULT_MAX_T: Final = 100

#: The model family federated today (its head: services/personalization/federated_train.py).
DEFAULT_MODEL: Final = "occupancy"
#: The shipped occupancy version: the fleet's base unless the run config names another.
DEFAULT_BASE_VERSION: Final = "1.0.0"
#: occupancy's head, Linear(32, 2): 64 weights + 2 biases.
HEAD_SIZE: Final = 66
