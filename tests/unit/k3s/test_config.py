"""The config files and environment in the manifests match the code's config dataclasses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hub.config import HubConfig
from services.audit.config import AuditConfig
from services.inference.config import InferenceConfig
from services.kit.auth import Role
from services.kit.certs import server_name
from services.kit.config import ServiceConfig
from services.kit.watchdog import LIVENESS
from services.personalization.config import PersonalizationConfig
from services.update.config import UpdateConfig
from tests.support.k3s import (
    HEALTH_PORT,
    METRICS_PORT,
    OVERLAYS,
    PERSONALIZATION_PORT,
    config_data,
    container_port,
    host_port,
    load_role_config,
    named,
    plain_env,
    pod_spec,
    role_container,
    role_mounts,
    service_port,
    under_writable,
)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_config_files_match_the_code(
    rendered: dict[str, list[dict[str, Any]]], overlay: str, tmp_path: Path
) -> None:
    objs = rendered[overlay]
    defaults: dict[str, ServiceConfig] = {
        "inference": InferenceConfig(),
        "audit": AuditConfig(),
        "update": UpdateConfig(),
    }
    configs: dict[str, Any] = {
        role: load_role_config(objs, role, type(d), tmp_path) for role, d in defaults.items()
    }
    hub: HubConfig = load_role_config(objs, "hub", HubConfig, tmp_path)
    for role, cfg in configs.items():
        c = role_container(objs, role)
        mounts = role_mounts(objs, role)
        # The port the code defaults to is the one the container, Service and peers use.
        assert cfg.port == defaults[role].port == container_port(c, "grpc"), role
        assert service_port(objs, server_name(Role(role)), "grpc") == cfg.port, role
        assert cfg.host == "0.0.0.0", role
        assert cfg.metrics_host == "0.0.0.0", role
        assert cfg.metrics_port == container_port(c, "metrics") == METRICS_PORT, role
        assert service_port(objs, server_name(Role(role)), "metrics") == METRICS_PORT, role
        assert mounts.get(str(cfg.certs_dir)) is True, f"{role}: certs not mounted read-only"
        assert cfg.drain_delay_seconds > 0, f"{role}: no drain delay for the probes"
        grace = pod_spec(named(objs, "Deployment", f"roost-{role}"))[
            "terminationGracePeriodSeconds"
        ]
        assert grace > cfg.drain_delay_seconds + cfg.grace_seconds, role
    # Peers: host = the role's Service (= its certificate's DNS name), port = its default.
    ports = {role: cfg.port for role, cfg in configs.items()}
    for client, target, server in (
        (hub, hub.inference_target, "inference"),
        (hub, hub.audit_target, "audit"),
        (configs["update"], configs["update"].audit_target, "audit"),
        (configs["update"], configs["update"].inference_target, "inference"),
    ):
        assert host_port(target) == (server_name(Role(server)), ports[server]), (
            type(client).__name__,
            target,
        )
    assert host_port(hub.inference_target)[1] == host_port(HubConfig().inference_target)[1]
    assert host_port(hub.audit_target)[1] == host_port(HubConfig().audit_target)[1]
    assert hub.mqtt_port == HubConfig().mqtt_port == service_port(objs, hub.mqtt_host, "mqtt")
    assert hub.metrics_host == "0.0.0.0"
    assert (
        hub.metrics_port == container_port(role_container(objs, "hub"), "metrics") == METRICS_PORT
    )
    assert service_port(objs, "roost-hub", "metrics") == METRICS_PORT
    # One hub identity: decision topics, checkpoint origin and update trail agree.
    assert hub.hub_id == configs["audit"].hub_id == configs["update"].hub_id
    # State where the volumes are.
    assert under_writable(configs["audit"].data_dir, role_mounts(objs, "audit"))
    assert under_writable(configs["update"].data_dir, role_mounts(objs, "update"))
    assert under_writable(configs["update"].registry_root, role_mounts(objs, "update"))
    inference = configs["inference"]
    assert inference.registry_root is not None
    assert role_mounts(objs, "inference")[str(inference.registry_root)] is True
    assert inference.registry_root == configs["update"].registry_root
    assert "listener 1883 " in config_data(objs, "roost-mosquitto-config", "mosquitto.conf")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_personalization_config(
    rendered: dict[str, list[dict[str, Any]]], overlay: str, tmp_path: Path
) -> None:
    objs = rendered[overlay]
    c = role_container(objs, "personalization")
    env = plain_env(c)
    cfg = load_role_config(objs, "personalization", PersonalizationConfig, tmp_path)
    assert cfg.port == PersonalizationConfig().port == PERSONALIZATION_PORT
    assert cfg.port == container_port(c, "grpc")
    assert service_port(objs, "roost-personalization", "grpc") == PERSONALIZATION_PORT
    assert cfg.metrics_port == container_port(c, "metrics") == METRICS_PORT
    assert under_writable(cfg.data_dir, role_mounts(objs, "personalization"))
    for server, default in (
        ("audit", AuditConfig().port),
        ("update", UpdateConfig().port),
        ("inference", InferenceConfig().port),
    ):
        target = env[f"ROOST_PERSONALIZATION_{server.upper()}_TARGET"]
        assert host_port(target) == (server_name(Role(server)), default)
        assert getattr(cfg, f"{server}_target") == target


SERVICE_CONFIGS: dict[str, type[ServiceConfig]] = {
    "inference": InferenceConfig,
    "audit": AuditConfig,
    "update": UpdateConfig,
    "personalization": PersonalizationConfig,
}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probe_port_is_served_by_the_kit(
    rendered: dict[str, list[dict[str, Any]]], overlay: str, tmp_path: Path
) -> None:
    """The kubelet's gRPC probes are plaintext and the services' port requires mTLS: each
    process (the services and the hub), configured as in its pod, opens the kit's
    health-only port on the port the probes use, and no Service exposes that port to other
    pods. Liveness asks for `liveness`, which sees a stuck event loop; readiness for ""."""
    objs = rendered[overlay]
    for role, cls in {**SERVICE_CONFIGS, "hub": HubConfig}.items():
        cfg = load_role_config(objs, role, cls, tmp_path)
        c = role_container(objs, role)
        assert cfg.health_port == HEALTH_PORT == container_port(c, "grpc-health"), role
        assert cfg.health_port not in (getattr(cfg, "port", None), cfg.metrics_port), role
        probes = {k: c[k]["grpc"] for k in ("readinessProbe", "livenessProbe")}
        assert probes["readinessProbe"] == {"port": HEALTH_PORT}, role
        assert probes["livenessProbe"] == {"port": HEALTH_PORT, "service": LIVENESS}, role
        # The loop may stall longer than a probe's timeout before liveness says so, but
        # far less than the kubelet's patience (period x failures) for a stuck process.
        live = c["livenessProbe"]
        assert 0 < cfg.loop_stall_seconds < live["periodSeconds"] * live["failureThreshold"]
        exposed = {
            p["port"] for p in named(objs, "Service", server_name(Role(role)))["spec"]["ports"]
        }
        assert HEALTH_PORT not in exposed, role
