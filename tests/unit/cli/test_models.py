"""``roost models``: paged answers of the update service are read to the end, each page
token passed back exactly as the service issued it."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from cli import models
from roost.common.v1 import common_pb2
from roost.update.v1 import update_service_pb2 as pb


def test_every_page_is_read_with_the_tokens_unchanged(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pages = {
        "": (["occupancy", "comfort"], "opaque-1=="),
        "opaque-1==": (["anomaly"], "opaque-2=="),
        "opaque-2==": (["routine"], ""),
    }
    seen: list[str] = []

    def call(args: argparse.Namespace, method: str, request: Any, timeout: float = 120) -> Any:
        assert method == "CheckForUpdates"
        seen.append(request.page_token)
        names, token = pages[request.page_token]
        updates = [
            pb.AvailableUpdate(
                model=common_pb2.ModelRef(name=n, version="2.0.0"), length_bytes=2048
            )
            for n in names
        ]
        return pb.CheckForUpdatesResponse(updates=updates, next_page_token=token)

    monkeypatch.setattr(models, "_call", call)
    assert models.cmd_check(argparse.Namespace()) == 0
    assert seen == ["", "opaque-1==", "opaque-2=="]
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == ["occupancy", "comfort", "anomaly", "routine"]
    assert out[0] == "occupancy  2.0.0      2 kB available"
