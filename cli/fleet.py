"""``roost fleet serve``: the fleet's cloud side (a SuperLink and Roost's ServerApp), and the
hub side: ``roost run`` starts a SuperNode only when ``[fleet] enabled``
(:class:`services.kit.fleet_config.FleetConfig`).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import TYPE_CHECKING

from services.kit.fleet_config import FleetConfig

if TYPE_CHECKING:
    from cli.stack import Stack


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
    server = FleetServer(stack, port=args.port)
    try:
        server.start()
        print(f'SuperLink on {server.address} (hubs: [fleet] superlink = "{server.address}")')
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
