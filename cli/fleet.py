"""``roost fleet serve``: the fleet's cloud side (a SuperLink and Roost's ServerApp), and the
hub side's ``[fleet]`` configuration (``roost run`` starts a SuperNode only when enabled).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cli.fleet_server import FleetServer
    from cli.stack import Stack
    from services.kit.certs import TlsFiles


@dataclass(frozen=True)
class FleetConfig:
    """``[fleet]`` of roost.toml (env ``ROOST_FLEET_*``). Off by default: a hub that has
    not opted in starts no SuperNode and opens no connection to any fleet."""

    enabled: bool = False
    # The SuperLink's address (host:port); required when enabled.
    superlink: str = ""
    # Without TLS to the SuperLink (loopback and tests only); else its CA's certificate.
    insecure: bool = False
    root_certificates: Path | None = None
    # The SuperNode's own runtime API port on 127.0.0.1; 0 picks a free one.
    supernode_port: int = 0
    # The largest min-participants (t) this hub accepts: it adds 1/t of the noise variance
    # and trusts the server that at least t hubs are in each sum (docs/fleet.md).
    max_min_participants: int = 100

    def check(self) -> None:
        if not self.enabled:
            return
        host, _, port = self.superlink.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError("[fleet] superlink: host:port required when enabled")
        if self.max_min_participants < 1:
            raise ValueError("[fleet] max_min_participants: must be >= 1")
        if self.insecure and self.root_certificates is not None:
            raise ValueError("[fleet] root_certificates and insecure = true: choose one")
        if self.insecure:
            return
        if self.root_certificates is None:
            raise ValueError(
                "[fleet] enabled needs root_certificates: the CA certificate of the "
                "SuperLink (the file `roost fleet serve` prints, docs/fleet.md); "
                "insecure = true (no TLS) is for tests on loopback only"
            )
        if not self.root_certificates.is_file():
            raise ValueError(f"[fleet] root_certificates: {self.root_certificates} is not a file")


def load_fleet_config() -> FleetConfig:
    from services.kit.config import load_config

    cfg = load_config(FleetConfig, "fleet")
    cfg.check()
    return cfg


def _cmd_serve(args: argparse.Namespace) -> int:
    from cli.fleet_server import FleetServer
    from cli.stack import Stack, StackError

    run_config: dict[str, object] = {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"roost fleet serve: --set {item}: KEY=VALUE expected", file=sys.stderr)
            return 2
        run_config[key] = _number(value)
    stack_home = args.home / "fleet"
    run_config.setdefault("report-path", str((stack_home / "rounds.jsonl").resolve()))
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
        print(server.submit(run_config))
        print(f"each round's report: {run_config['report-path']}; Ctrl-C stops the SuperLink")
        while not stop.wait(0.5):
            if not stack.procs["superlink"].alive():
                print(stack.procs["superlink"].log_tail(), file=sys.stderr)
                return 1
        return 0
    except StackError as e:
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
