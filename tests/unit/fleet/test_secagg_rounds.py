"""Roost's ServerApp (``fleet.server_app.main``) runs whole SecAgg+ rounds against
Flower's own ``secaggplus_mod`` on in-process hubs: the real workflow and the real mod,
with a grid that delivers each message by calling the hub's ClientApp.

The SecAgg+ share count: Flower 1.42 tells the hubs ``SHARE_NUMBER`` before it raises an
even count to the next odd one for the neighbour ring, so with the old default (4 shares)
and more than 4 hubs every hub failed in share keys and no round was released. Real
SuperLink and SuperNodes: ``bench/fleet.py`` (rounds of 6 and 20 hubs released); 4 hubs with a dropout:
tests/integration/test_fleet_flower.py.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Context, Error, Message, RecordDict
from flwr.client import Client, ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.common.constant import ErrorCode
from flwr.common.secure_aggregation.quantization import quantize
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from fleet import protocol
from fleet.received import describe
from fleet.server_app import main
from fleet.server_settings import ServerSettings
from tests.support.held_updates import held_updates, received

HEAD = 66
RUN_ID = 7
SUPERLINK = 1  # Flower's node id of the SuperLink


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    # Flower's Message stamps the run id the serverapp process was started for.
    monkeypatch.setattr(TaskIdentity, "_run_id", RUN_ID)
    monkeypatch.setattr(TaskIdentity, "_node_id", SUPERLINK)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


class _Hub(NumPyClient):
    def __init__(self, delta: np.ndarray) -> None:
        self.delta = delta

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        assert config[protocol.MODEL] == "occupancy"
        return [self.delta], 1, {}


class InProcessGrid(Grid):
    """Delivers every message at once to its hub's ClientApp (with ``secaggplus_mod``),
    each hub keeping its own Context across messages, as a SuperNode does."""

    def __init__(self, deltas: dict[int, np.ndarray]) -> None:
        self.deltas = deltas
        self.contexts = {nid: Context(RUN_ID, nid, {}, RecordDict(), {}) for nid in deltas}
        self.errors: list[str] = []

        def client_fn(context: Context) -> Client:
            return _Hub(self.deltas[context.node_id]).to_client()

        self.app = ClientApp(client_fn=client_fn, mods=[secaggplus_mod])
        self._run = Run.create_empty(RUN_ID)

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.deltas)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        replies = []
        for msg in messages:
            nid = msg.metadata.dst_node_id
            msg.metadata.__dict__["_message_id"] = f"m-{len(replies)}-{nid}"
            # Each hub gets its own copy, as if off the wire (the setup stage sends one
            # content object to all, and secaggplus_mod pops from it).
            try:
                reply = self.app(copy.deepcopy(msg), self.contexts[nid])
            except Exception as e:  # what flwr-clientapp replies (run_clientapp.py)
                reason = f"{type(e)}:<'{e}'>"
                reply = Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason), reply_to=msg)
            reply.metadata.__dict__["_src_node_id"] = nid  # as the SuperNode sends it
            if reply.has_error():
                self.errors.append(reply.error.reason)
            replies.append(reply)
        return replies


def _run(tmp_path: Path, hubs: int, **settings: Any) -> tuple[InProcessGrid, list[dict[str, Any]]]:
    rng = np.random.default_rng(hubs)
    deltas = {1000 + i: rng.normal(0, 0.1, HEAD).astype(np.float32) for i in range(hubs)}
    grid = InProcessGrid(deltas)
    report = tmp_path / "rounds.jsonl"
    run_config: dict[str, Any] = {
        "rounds": 1,
        "min-nodes": hubs,
        "min-participants": 2,
        "epsilon-budget": 100.0,
        "stage-timeout": 5.0,
        "report-path": str(report),
        **settings,
    }
    ctx = Context(RUN_ID, 0, {}, RecordDict(), run_config)
    main(grid, ctx)
    logging.getLogger().handlers.clear()  # main() added a file handler for the report
    lines = [json.loads(line) for line in report.read_text().splitlines()]
    return grid, lines


@pytest.mark.timeout(120)
def test_default_secagg_settings_release_a_round_of_seven_hubs(tmp_path: Path) -> None:
    grid, lines = _run(tmp_path, hubs=7)
    assert grid.errors == []
    released = [r for r in lines if r.get("released")]
    assert [r["participants"] for r in released] == [7], lines
    # The released head is the average of the seven deltas (up to quantization).
    average = np.mean(list(grid.deltas.values()), axis=0)
    assert np.allclose(released[0]["head"], average, atol=1e-5)


@pytest.mark.timeout(120)
def test_the_old_even_share_count_loses_the_round_with_more_hubs_than_shares(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What main had before (4 shares), bypassing today's validation: Flower tells each
    # hub 4 shares but gives it 5 neighbours; every hub fails in share keys.
    checked = ServerSettings.from_run_config

    def old_defaults(cls: type[ServerSettings], rc: dict[str, Any]) -> ServerSettings:
        settings = checked(rc)
        object.__setattr__(settings, "secagg_num_shares", 4)
        return settings

    monkeypatch.setattr(ServerSettings, "from_run_config", classmethod(old_defaults))
    grid, lines = _run(tmp_path, hubs=7)
    assert grid.errors, "the even share count should have failed on the hubs"
    assert not [r for r in lines if r.get("released")], lines


@pytest.mark.parametrize(("shares", "threshold"), [(4, 3), (6, 2), (5, 5), (5, 6), (3, 1)])
def test_share_counts_flower_mishandles_are_refused(shares: int, threshold: int) -> None:
    with pytest.raises(ValueError, match="secagg"):
        ServerSettings(secagg_num_shares=shares, secagg_threshold=threshold)


@pytest.mark.timeout(120)
def test_the_server_received_no_hub_contribution_only_masked_vectors(tmp_path: Path) -> None:
    got = tmp_path / "received.jsonl"
    grid, lines = _run(tmp_path, hubs=5, **{"received-path": str(got)})
    replies = received(got)
    assert len(replies) == 4 * 5  # four SecAgg+ stages, five hubs, every reply recorded
    contributions = {"1": {str(nid): d for nid, d in grid.deltas.items()}}
    held, compared = held_updates(replies, contributions)
    assert held == []
    assert compared == 5 * 5  # each hub's masked vector against each contribution
    # Yet their sum is in the release: the average of the five contributions.
    [released] = [r for r in lines if r.get("released")]
    assert np.allclose(released["head"], np.mean(list(grid.deltas.values()), axis=0), atol=1e-5)


def test_the_check_finds_a_contribution_the_server_held() -> None:
    delta = np.random.default_rng(0).normal(0, 0.1, HEAD).astype(np.float32)
    [quantized] = quantize([delta], 8.0, 2**22)  # what SecAgg+ masks, unmasked
    lines = [
        {"round": "1", "node": 9, "arrays": [describe("plain", delta)]},
        {"round": "1", "node": 9, "arrays": [describe("quantized", quantized)]},
        {"round": "2", "node": 9, "arrays": [describe("other round", delta)]},
    ]
    held, _ = held_updates(lines, {"1": {"hub": delta}})
    assert [(h.where, h.why.split()[0]) for h in held] == [
        ("plain", "same"),
        ("quantized", "correlation"),
    ]
