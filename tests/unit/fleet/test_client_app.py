"""A server that claims more hubs per sum than the hub accepts gets nothing: the hub sits
the round out before its personalization service is called (nothing charged or computed)."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Context
from flwr.common import RecordDict

from fleet import protocol
from fleet.client_app import HubClient
from fleet.egress import SitOut

NODE_CONFIG = {
    protocol.NODE_HUB_ID: "h1",
    # No certificates there: any call to a service would fail with FileNotFoundError.
    protocol.NODE_CERTS_DIR: "/nonexistent",
    protocol.NODE_PERSONALIZATION: "127.0.0.1:1",
    protocol.NODE_AUDIT: "127.0.0.1:2",
    protocol.NODE_SUPERLINK: "fleet.example:9093",
    protocol.NODE_MAX_T: "10",
}


def _fit(t: int) -> None:
    ctx = Context(
        run_id=1, node_id=2, node_config=dict(NODE_CONFIG), state=RecordDict(), run_config={}
    )
    HubClient(ctx).fit(
        [np.zeros(66, np.float32)],
        {
            protocol.ROUND_ID: "1-1",
            protocol.MODEL: "occupancy",
            protocol.CLIP_NORM: 1.0,
            protocol.NOISE_MULTIPLIER: 1.0,
            protocol.MIN_PARTICIPANTS: t,
        },
    )


def test_a_larger_t_than_the_hub_accepts_is_sat_out_before_any_call() -> None:
    with pytest.raises(SitOut) as e:
        _fit(11)
    assert "min-participants 11" in e.value.reason


def test_within_the_limit_the_hub_calls_its_service() -> None:
    with pytest.raises(FileNotFoundError):  # it went on to open the mTLS channel
        _fit(10)
