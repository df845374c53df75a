"""``roost fleet serve``: the fleet's cloud side (a SuperLink and Roost's ServerApp), and the
hub side: ``roost run`` starts a SuperNode only when ``[fleet] enabled``
(:class:`services.kit.fleet_config.FleetConfig`).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from services.kit.fleet_config import FleetConfig

if TYPE_CHECKING:
    from cli.fleet_server import FleetServer
    from cli.stack import Stack
    from services.kit.certs import TlsFiles


def load_fleet_config() -> FleetConfig:
    from services.kit.config import load_config

    cfg = load_config(FleetConfig, "fleet")
    cfg.check()
    # (On this machine: in k3s the path is the CA's mount in the SuperNode's pod.)
    if cfg.enabled and cfg.root_certificates and not cfg.root_certificates.is_file():
        raise ValueError(f"[fleet] root_certificates: {cfg.root_certificates} is not a file")
    return cfg


@dataclass(frozen=True)
class ReleaseTarget:
    """Where ``roost fleet serve`` publishes the run's model: the fleet's TUF repository
    (and the operator's keys) and the base model directory the head is put on."""

    repo_dir: Path
    keys_dir: Path
    base_dir: Path


def _release_target(args: argparse.Namespace, run_config: dict[str, object]) -> ReleaseTarget:
    """Checked before the run starts: the repository opens, the base model loads and is
    the version the run names (``base-version``, set from the base model if not given)."""
    from cli.tuf_repo import ModelRepository
    from fleet.protocol import DEFAULT_MODEL
    from models.manifest import load_manifest, shipped_models_dir
    from services.kit.errors import InvalidArgument

    if args.release_keys is None:
        raise InvalidArgument("--release-repo needs --release-keys (the operator's TUF keys)")
    ModelRepository.open(args.release_repo, args.release_keys)
    model = str(run_config.get("model", DEFAULT_MODEL))
    base_dir = args.base_model or shipped_models_dir() / model
    base = load_manifest(base_dir)
    named = str(run_config.setdefault("base-version", base.version))
    if (base.name, base.version) != (model, named):
        raise InvalidArgument(
            f"--base-model {base_dir} holds {base.name} {base.version}, not {model} {named}"
        )
    return ReleaseTarget(args.release_repo, args.release_keys, base_dir)


def _publish_when_ended(
    release: ReleaseTarget, report: Path, run_id: str, stack: Stack, stop: threading.Event
) -> None:
    from cli.fleet_release import publish_run, wait_for_run

    print(f"run {run_id}: its release goes to {release.repo_dir} when the run ends")
    run = wait_for_run(report, run_id, alive=stack.procs["superlink"].alive, stop=stop)
    if run is None:
        return
    target = publish_run(run, release.base_dir, release.repo_dir, release.keys_dir)
    if target is None:
        print(f"run {run_id} ended ({run.ended}) with no released round: nothing published")
    else:
        print(f"run {run_id} ended ({run.ended}): published {target.path} ({target.sha256})")


def _cmd_serve(args: argparse.Namespace) -> int:
    from cli.fleet_server import FleetServer, run_id_of
    from cli.stack import Stack, StackError
    from services.kit.errors import RoostError

    run_config: dict[str, object] = {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"roost fleet serve: --set {item}: KEY=VALUE expected", file=sys.stderr)
            return 2
        run_config[key] = _number(value)
    stack_home = args.home / "fleet"
    run_config.setdefault("report-path", str((stack_home / "rounds.jsonl").resolve()))
    release: ReleaseTarget | None = None
    if args.release_repo is not None:
        try:
            release = _release_target(args, run_config)
        except RoostError as e:
            print(f"roost fleet serve: {e}", file=sys.stderr)
            return 2
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stack = Stack(stack_home, hub_id="fleet-server")
    try:
        server = FleetServer(
            stack,
            port=args.port,
            host=args.host,
            names=args.name,
            tls=_operator_tls(args),
            insecure=args.insecure,
        )
        server.start()
        print(_hub_settings(server, args.name))
        submitted = server.submit(run_config)
        print(submitted)
        print(f"each round's report: {run_config['report-path']}; Ctrl-C stops the SuperLink")
        if release is not None:
            report = Path(str(run_config["report-path"]))
            _publish_when_ended(release, report, run_id_of(submitted), stack, stop)
        while not stop.wait(0.5):
            if not stack.procs["superlink"].alive():
                print(stack.procs["superlink"].log_tail(), file=sys.stderr)
                return 1
        return 0
    except (StackError, RoostError) as e:
        print(f"roost fleet serve: {e}", file=sys.stderr)
        return 1
    finally:
        stack.stop()


def _operator_tls(args: argparse.Namespace) -> TlsFiles | None:
    """The operator's own certificate (all three files), or None to issue one."""
    from cli.stack import StackError
    from services.kit.certs import TlsFiles

    given = [args.ssl_ca_certfile, args.ssl_certfile, args.ssl_keyfile]
    if not any(given):
        return None
    if not all(given) or args.insecure:
        raise StackError(
            "--ssl-ca-certfile, --ssl-certfile and --ssl-keyfile go together, without --insecure"
        )
    return TlsFiles(*(Path(f).resolve() for f in given))


def _hub_settings(server: FleetServer, names: list[str]) -> str:
    """What an operator puts in each hub's roost.toml to join this SuperLink."""
    host = names[0] if names else server.local_host
    lines = [f"SuperLink on {server.host}:{server.port}. Hubs, in roost.toml:", "  [fleet]"]
    lines += ["  enabled = true", f'  superlink = "{host}:{server.port}"']
    if server.tls is None:
        lines.append("  insecure = true   # no TLS: --insecure (tests on loopback only)")
    else:
        lines.append(f'  root_certificates = "<a copy of {server.tls.ca}>"')
    return "\n".join(lines)


def _number(text: str) -> object:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fleet = sub.add_parser("fleet", help="fleet learning (Flower): the cloud side")
    fsub = fleet.add_subparsers(dest="fleet_command", required=True)
    serve = fsub.add_parser("serve", help="run a SuperLink and Roost's ServerApp")
    serve.add_argument("--port", type=int, default=9093, help="SuperLink port (0: a free one)")
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)"
    )
    serve.add_argument(
        "--name",
        action="append",
        default=[],
        help="a host name or address hubs connect to: the issued certificate names it "
        "(repeatable; the first is the one printed for hubs)",
    )
    serve.add_argument("--ssl-ca-certfile", help="your own CA certificate (hubs trust it)")
    serve.add_argument("--ssl-certfile", help="your own SuperLink certificate (PEM)")
    serve.add_argument("--ssl-keyfile", help="its private key (PEM)")
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="no TLS: plain HTTP, for tests on loopback only (hubs set insecure = true)",
    )
    serve.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="ServerApp run config (fleet/app/pyproject.toml), e.g. rounds=10 noise-multiplier=2",
    )
    serve.add_argument(
        "--release-repo",
        type=Path,
        help="the fleet's TUF repository: publish the run's global model there when it ends"
        " (docs/fleet.md, 'The release')",
    )
    serve.add_argument(
        "--release-keys",
        type=Path,
        help="the repository's signing keys (as for roost models publish --repo --keys)",
    )
    serve.add_argument(
        "--base-model",
        type=Path,
        help="the base model directory the head is put on (default: the shipped model)",
    )
    serve.set_defaults(func=_cmd_serve)


def start_fleet_node(stack: Stack, cfg: FleetConfig) -> bool:
    """``roost run``'s hub side: a SuperNode only when ``[fleet] enabled``; otherwise
    nothing is started and no connection to any fleet is made. Returns whether it started."""
    if not cfg.enabled:
        return False
    from cli.fleet_node import start_supernode

    cfg.check()
    start_supernode(
        stack,
        cfg.superlink,
        port=cfg.supernode_port,
        root_certificates=None if cfg.insecure else cfg.root_certificates,
        max_min_participants=cfg.max_min_participants,
    )
    return True
