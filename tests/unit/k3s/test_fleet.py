"""k3s's fleet component runs the SuperNode ``roost run`` starts: the same
``flower-supernode`` command line (cli/fleet_node.py), [fleet] values from the pod's
``ROOST_FLEET_*`` variables, the hub's id, certificates and service addresses from the
hub's own rendered config; egress to the configured SuperLink's one address and port only;
the hub sees ``[fleet] enabled`` only with the component."""

from __future__ import annotations

import ipaddress
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

import cli.fleet_node
from cli.fleet_node import start_supernode, supernode_args
from cli.stack import Launch
from hub.config import HubConfig
from services.kit.auth import Role
from services.kit.config import load_config
from services.kit.fleet_config import FleetConfig
from tests.support.k3s import (
    HEALTH_PORT,
    K3S,
    RENDERINGS,
    ROOST_UID,
    ROOT,
    find_kubectl,
    load_role_config,
    named,
    plain_env,
    pod_spec,
    render,
    role_container,
    role_toml,
    yaml_module,
)

FLEET = "edge+fleet"
# flower-supernode's Runtime API port (its default), on 127.0.0.1 in the pod.
RUNTIME_PORT = 9094
SITE = K3S / "components" / "fleet" / "superlink.yaml"


def _expand(text: str, env: dict[str, str]) -> str:
    """$(VAR) in a container's args as the kubelet expands it (an undefined one stays)."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), text)


def _supernode(objs: list[dict[str, Any]]) -> dict[str, Any]:
    container: dict[str, Any] = pod_spec(named(objs, "Deployment", "roost-supernode"))[
        "containers"
    ][0]
    return container


def _volume_of(objs: list[dict[str, Any]], path: PurePosixPath) -> tuple[dict[str, Any], Any]:
    """The supernode's (volumeMount, volume) holding ``path`` (the deepest mount)."""
    pod = pod_spec(named(objs, "Deployment", "roost-supernode"))
    mounts = [m for m in _supernode(objs)["volumeMounts"] if path.is_relative_to(m["mountPath"])]
    assert mounts, f"{path} is on no volume of the supernode"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    return mount, next(v for v in pod["volumes"] if v["name"] == mount["name"])


@dataclass
class _RecordingStack:
    """Stands in for `roost run`'s stack: records the Launch of the SuperNode."""

    hub_id: str
    certs_dir: Path
    home: Path
    launches: list[Launch] = field(default_factory=list)

    def port_of(self, role: Role) -> int:
        return {Role.PERSONALIZATION: 50054, Role.AUDIT: 50052}[role]

    def _spawn(self, name: str, launch: Launch) -> Any:
        self.launches.append(launch)
        return self

    def poll_ready(self, name: str) -> bool:
        return True

    info: dict[str, Any] = field(default_factory=dict)


def _roost_run_argv(hub: HubConfig, fleet: FleetConfig, tmp: Path) -> tuple[list[str], Any]:
    stack = _RecordingStack(hub.hub_id, hub.certs_dir, tmp)
    start_supernode(
        stack,  # type: ignore[arg-type]
        fleet.superlink,
        port=RUNTIME_PORT,
        root_certificates=fleet.root_certificates,
        max_min_participants=fleet.max_min_participants,
    )
    (launch,) = stack.launches
    return launch.argv, launch.env


def test_the_supernode_runs_the_command_line_roost_run_starts(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    objs = rendered[FLEET]
    c = _supernode(objs)
    env = plain_env(c)
    fleet = load_config(FleetConfig, "fleet", env=env)
    fleet.check()  # what `roost run` checks before it starts anything
    assert fleet.enabled
    assert not fleet.insecure
    assert fleet.root_certificates is not None
    hub = load_role_config(objs, "hub", HubConfig, tmp_path)
    args = [_expand(a, env) for a in c["args"]]
    assert "$(" not in " ".join(args), "every $(VAR) is defined in the container"
    # The same builder as `roost run`, with the hub's k3s addresses and the probes' port.
    assert c["command"] == ["flower-supernode"]
    assert args == supernode_args(
        hub_id=hub.hub_id,
        certs_dir=hub.certs_dir,
        personalization=hub.personalization_target,
        audit=hub.audit_target,
        superlink=fleet.superlink,
        port=RUNTIME_PORT,
        root_certificates=fleet.root_certificates,
        max_min_participants=fleet.max_min_participants,
        health_address=f"0.0.0.0:{HEALTH_PORT}",
    )
    # And `roost run` itself, with the same values: the only differences are where the
    # services are (127.0.0.1 and the stack's ports there, the k3s Services here) and the
    # health port k3s adds for its probes.
    argv, run_env = _roost_run_argv(hub, fleet, tmp_path)
    assert Path(argv[0]).name == c["command"][0]
    here = (
        " ".join(args)
        .replace(hub.personalization_target, "127.0.0.1:50054")
        .replace(hub.audit_target, "127.0.0.1:50052")
        .replace(f" --health-server-address 0.0.0.0:{HEALTH_PORT}", "")
    )
    assert here == " ".join(argv[1:])
    quiet = {"FLWR_TELEMETRY_ENABLED", "FLWR_DISABLE_UPDATE_CHECK"}  # Flower's phoning home off
    assert set(run_env) == {"FLWR_HOME", "PATH", *quiet}
    assert all(env[k] == run_env[k] for k in quiet)
    # Besides the [fleet] values the args read, the pod's environment is Flower's home
    # (on a writable volume), HOME and Flower's telemetry off; PATH is the image's.
    assert {k for k in env if not k.startswith("ROOST_FLEET_")} == {"FLWR_HOME", "HOME", *quiet}
    mount, volume = _volume_of(objs, PurePosixPath(env["FLWR_HOME"]))
    assert not mount.get("readOnly")
    assert "emptyDir" in volume
    assert (
        "ENV PATH=/opt/roost/bin:$PATH" in (ROOT / "containers" / "fleet.Containerfile").read_text()
    )


def test_the_supernode_mounts_the_hubs_certificates_and_the_superlinks_ca(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    objs = rendered[FLEET]
    hub = load_role_config(objs, "hub", HubConfig, tmp_path)
    fleet = load_config(FleetConfig, "fleet", env=plain_env(_supernode(objs)))
    # The ClientApp calls personalization and audit as the hub: the hub's certificates,
    # at the hub's certs_dir, from the Secret the hub's pod mounts there.
    mount, volume = _volume_of(objs, PurePosixPath(hub.certs_dir))
    assert mount["readOnly"] is True
    assert mount["mountPath"] == str(hub.certs_dir)
    hub_pod = pod_spec(named(objs, "Deployment", "roost-hub"))
    hub_mount = next(
        m
        for m in role_container(objs, "hub")["volumeMounts"]
        if m["mountPath"] == mount["mountPath"]
    )
    hub_volume = next(v for v in hub_pod["volumes"] if v["name"] == hub_mount["name"])
    assert volume["secret"]["secretName"] == hub_volume["secret"]["secretName"] == "roost-hub-tls"
    assert volume["secret"]["defaultMode"] & 0o007 == 0, "the hub's key is not world-readable"
    # The SuperLink's CA, the one file of its Secret.
    assert fleet.root_certificates is not None
    ca = PurePosixPath(fleet.root_certificates)
    mount, volume = _volume_of(objs, ca)
    assert mount["readOnly"] is True
    assert volume["secret"]["secretName"] == "roost-fleet-superlink-ca"
    assert volume["secret"]["items"] == [
        {"key": "ca.pem", "path": ca.relative_to(mount["mountPath"]).as_posix()}
    ]
    # Roost's image and identity, probed on the health port the args open.
    c = _supernode(objs)
    assert "/roost-fleet:" in c["image"]
    assert c["securityContext"]["runAsUser"] == ROOST_UID
    assert c["readinessProbe"]["grpc"]["port"] == HEALTH_PORT
    assert c["livenessProbe"]["grpc"]["port"] == HEALTH_PORT


@pytest.mark.parametrize("overlay", RENDERINGS)
def test_the_hub_sees_fleet_enabled_only_with_the_component(
    rendered: dict[str, list[dict[str, Any]]], overlay: str, tmp_path: Path
) -> None:
    objs = rendered[overlay]
    # As the hub process reads it (hub/__main__.py): its roost.toml and its environment.
    path = tmp_path / "hub.toml"
    path.write_text(role_toml(objs, "hub"))
    fleet = load_config(FleetConfig, "fleet", file=path, env=plain_env(role_container(objs, "hub")))
    assert fleet.enabled == (overlay == FLEET)


def _site(path: Path = SITE) -> dict[str, str]:
    doc = yaml_module().safe_load(path.read_text())
    assert doc["metadata"]["annotations"]["config.kubernetes.io/local-config"] == "true"
    data: dict[str, str] = doc["data"]
    return data


def superlink_exposure(objs: list[dict[str, Any]]) -> list[str]:
    """What lets the SuperNode reach more outside the cluster than the SuperLink it dials:
    its ipBlock egress must be one address, on the --superlink port (and that address
    when --superlink names an IP)."""
    env = plain_env(_supernode(objs))
    host, _, port = env["ROOST_FLEET_SUPERLINK"].rpartition(":")
    problems = []
    pol = named(objs, "NetworkPolicy", "roost-supernode")["spec"]
    for rule in pol["egress"]:
        for peer in rule["to"]:
            if "ipBlock" not in peer:
                continue
            net = ipaddress.ip_network(peer["ipBlock"]["cidr"])
            if net.num_addresses != 1 or peer["ipBlock"].get("except"):
                problems.append(f"egress to {net}, wider than one address")
            if [p["port"] for p in rule["ports"]] != [int(port)]:
                problems.append(f"egress to {net} on {rule['ports']}, not the SuperLink's {port}")
            try:
                literal = ipaddress.ip_address(host.strip("[]"))
            except ValueError:
                continue  # a name: its address is the site's to give
            if net != ipaddress.ip_network(literal):
                problems.append(f"egress to {net}, but the SuperNode dials {literal}")
    return problems


def test_egress_to_the_configured_superlink_only(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = rendered[FLEET]
    site = _site()
    assert plain_env(_supernode(objs))["ROOST_FLEET_SUPERLINK"] == site["superlink"]
    pol = named(objs, "NetworkPolicy", "roost-supernode")["spec"]
    assert pol["ingress"] == []
    external = [r for r in pol["egress"] if any("ipBlock" in p for p in r["to"])]
    assert external == [
        {
            "to": [{"ipBlock": {"cidr": site["address"]}}],
            "ports": [{"protocol": "TCP", "port": int(site["port"])}],
        }
    ]
    assert superlink_exposure(objs) == []


def _render_with_site(tmp_path: Path, data: dict[str, str]) -> list[dict[str, Any]]:
    """The edge overlay with the fleet component, from a copy of k3s/ whose site file an
    integrator edited."""
    tree = tmp_path / "k3s"
    shutil.copytree(K3S, tree)
    site = tree / "components" / "fleet" / "superlink.yaml"
    text = site.read_text()
    for key, value in data.items():
        text = re.sub(rf"^  {key}: .*$", f'  {key}: "{value}"', text, flags=re.MULTILINE)
    site.write_text(text)
    edge = tree / "overlays" / "edge" / "kustomization.yaml"
    edge.write_text(
        edge.read_text().replace("# - ../../components/fleet", "- ../../components/fleet")
    )
    return render(find_kubectl(), tree / "overlays" / "edge")


@pytest.mark.parametrize(
    ("site", "wider"),
    [
        ({"superlink": "10.0.0.7:9092", "address": "10.0.0.7/32", "port": "9092"}, False),
        (
            {"superlink": "fleet.example.org:443", "address": "198.51.100.4/32", "port": "443"},
            False,
        ),
        ({"superlink": "10.0.0.7:9092", "address": "10.0.0.0/8", "port": "9092"}, True),
        ({"superlink": "10.0.0.7:9092", "address": "10.0.0.8/32", "port": "9092"}, True),
        (
            {"superlink": "fleet.example.org:9092", "address": "198.51.100.4/32", "port": "443"},
            True,
        ),
    ],
)
def test_one_site_file_sets_the_supernode_and_its_policy(
    tmp_path: Path, site: dict[str, str], wider: bool
) -> None:
    objs = _render_with_site(tmp_path, site)
    c = _supernode(objs)
    env = plain_env(c)
    assert env["ROOST_FLEET_SUPERLINK"] == site["superlink"]
    args = [_expand(a, env) for a in c["args"]]
    assert args[args.index("--superlink") + 1] == site["superlink"]
    assert f'superlink="{site["superlink"]}"' in args[args.index("--node-config") + 1]
    assert bool(superlink_exposure(objs)) == wider


def test_the_fleet_image() -> None:
    text = (ROOT / "containers" / "fleet.Containerfile").read_text()
    assert '-c constraints.txt ".[fleet]"' in text, "installs exactly the fleet extra"
    assert "COPY fleet ./fleet" in text, "the ClientApp is imported from the environment"
    assert 'ENTRYPOINT ["flower-supernode"]' in text
    assert f"USER {ROOST_UID}:{ROOST_UID}" in text
    stages = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    assert stages == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]
    final = text.split("\nFROM ${PYTHON_IMAGE}\n", 1)[1]
    assert "pip install" not in final
    # What the build context lets in (.dockerignore allow-list).
    assert "!fleet/" in (ROOT / ".dockerignore").read_text().splitlines()


def test_cli_fleet_node_is_the_one_builder() -> None:
    """`roost run` builds its argv with supernode_args (no second copy of the flags)."""
    source = Path(cli.fleet_node.__file__).read_text()
    assert source.count('"--superlink"') == 1
    assert source.count('"--node-config"') == 1
