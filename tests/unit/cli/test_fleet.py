"""``[fleet]``: off by default; when off, ``roost run`` starts nothing fleet-related (the
real processes: tests/integration/test_fleet_flower.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import cli.fleet_node
from cli.fleet import FleetConfig, start_fleet_node
from cli.main import main
from services.kit.config import load_config


class RecordingStack:
    """Stands in for a hub's stack: records the SuperNodes started on it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []


@pytest.fixture(autouse=True)
def record_supernodes(monkeypatch: pytest.MonkeyPatch) -> None:
    def start_supernode(stack: RecordingStack, superlink: str, **kw: Any) -> dict[str, Any]:
        stack.calls.append((superlink, kw))
        return {}

    monkeypatch.setattr(cli.fleet_node, "start_supernode", start_supernode)


def test_off_by_default_and_nothing_starts() -> None:
    cfg = load_config(FleetConfig, "fleet", env={})
    assert cfg == FleetConfig()
    assert not cfg.enabled
    stack = RecordingStack()
    # Even with a SuperLink configured, a hub that did not opt in starts no SuperNode.
    assert not start_fleet_node(stack, FleetConfig(superlink="a:1", insecure=True))  # type: ignore[arg-type]
    assert stack.calls == []


def test_enabled_from_the_environment_starts_one_supernode(tmp_path: Path) -> None:
    ca = tmp_path / "fleet-ca.pem"
    ca.write_text("a CA certificate\n")
    cfg = load_config(
        FleetConfig,
        "fleet",
        env={
            "ROOST_FLEET_ENABLED": "true",
            "ROOST_FLEET_SUPERLINK": "fleet.example:9093",
            "ROOST_FLEET_ROOT_CERTIFICATES": str(ca),
        },
    )
    stack = RecordingStack()
    assert start_fleet_node(stack, cfg)  # type: ignore[arg-type]
    assert stack.calls == [
        (
            "fleet.example:9093",
            {"port": 0, "root_certificates": ca, "max_min_participants": 100},
        )
    ]


@pytest.mark.parametrize(
    "cfg",
    [
        FleetConfig(enabled=True, insecure=True),  # no SuperLink
        FleetConfig(enabled=True, superlink="no-port", insecure=True),
        FleetConfig(enabled=True, superlink="a:1"),  # neither TLS nor insecure
        FleetConfig(enabled=True, superlink="a:1", insecure=True, root_certificates=Path("/")),
    ],
)
def test_an_enabled_config_must_say_where_and_how(cfg: FleetConfig) -> None:
    with pytest.raises(ValueError):
        cfg.check()


def test_roost_run_refuses_a_fleet_without_a_ca_and_says_what_to_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``[fleet] enabled`` with neither root_certificates nor ``insecure = true``: refused
    before anything starts, naming the setting and where the CA comes from."""
    config = tmp_path / "roost.toml"
    config.write_text('[fleet]\nenabled = true\nsuperlink = "fleet.example.org:9093"\n')
    monkeypatch.setenv("ROOST_CONFIG", str(config))
    for name in ("ROOST_FLEET_INSECURE", "ROOST_FLEET_ROOT_CERTIFICATES"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    assert main(["--home", str(home), "run"]) == 2
    err = capsys.readouterr().err
    assert "[fleet] enabled needs root_certificates" in err, err
    assert "roost fleet serve" in err, err
    assert "insecure = true" in err, err
    assert not home.exists()  # nothing started, not even the certificates


def test_roost_run_refuses_a_ca_path_that_is_not_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "roost.toml"
    config.write_text(
        '[fleet]\nenabled = true\nsuperlink = "fleet.example.org:9093"\n'
        f'root_certificates = "{tmp_path / "missing-ca.pem"}"\n'
    )
    monkeypatch.setenv("ROOST_CONFIG", str(config))
    for name in ("ROOST_FLEET_INSECURE", "ROOST_FLEET_ROOT_CERTIFICATES"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    assert main(["--home", str(home), "run"]) == 2
    assert "missing-ca.pem is not a file" in capsys.readouterr().err
    assert not home.exists()
