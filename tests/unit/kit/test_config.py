"""Typed configuration: defaults < TOML file < environment; bad values fail clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from hub.config import HubConfig
from services.inference.config import InferenceConfig
from services.kit.config import ConfigError, load_config


def test_defaults() -> None:
    cfg = load_config(InferenceConfig, "inference", env={})
    assert cfg.port == 50051
    assert cfg.model_dir.name == "artifacts"


def test_file_then_env_precedence(tmp_path: Path) -> None:
    f = tmp_path / "roost.toml"
    f.write_text('[inference]\nport = 6000\nthreads = 2\ncerts_dir = "/etc/roost/certs"\n')
    cfg = load_config(
        InferenceConfig, "inference", env={"ROOST_CONFIG": str(f), "ROOST_INFERENCE_PORT": "7000"}
    )
    assert cfg.port == 7000
    assert cfg.threads == 2
    assert cfg.certs_dir == Path("/etc/roost/certs")


def test_tuple_and_bool_and_optional() -> None:
    cfg = load_config(
        HubConfig,
        "hub",
        env={
            "ROOST_HUB_STATESTREAM_ENTITIES": "sensor.a=office/temperature, sensor.b=office/humidity",
            "ROOST_HUB_READY_FILE": "",
        },
    )
    assert cfg.statestream_entities == ("sensor.a=office/temperature", "sensor.b=office/humidity")
    assert cfg.ready_file is None


def test_bad_type_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="port"):
        load_config(InferenceConfig, "inference", env={"ROOST_INFERENCE_PORT": "http"})


def test_unknown_file_key(tmp_path: Path) -> None:
    f = tmp_path / "roost.toml"
    f.write_text("[hub]\nmqtt_prot = 1\n")
    with pytest.raises(ConfigError, match="mqtt_prot"):
        load_config(HubConfig, "hub", file=f, env={})


def test_config_is_frozen() -> None:
    cfg = load_config(HubConfig, "hub", env={})
    with pytest.raises(AttributeError):
        cfg.hub_id = "x"  # type: ignore[misc]
