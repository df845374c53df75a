"""The ``roost`` command line: run the stack, manage certificates, check status.

Heavy imports happen inside each command, so ``roost --help`` is instant and the
hub-only commands never load onnxruntime or torch.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cli.broker import HomeBroker
    from cli.prometheus_config import MetricsConfig
    from cli.stack import Stack
    from services.kit.fleet_config import FleetConfig

DEFAULT_HOME = Path("var")


def _cmd_run(args: argparse.Namespace) -> int:
    from cli.fleet import start_fleet_node
    from cli.stack import Stack, StackError
    from cli.supervisor import Supervisor

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    metrics = _metrics_sync_config()
    home_mode = _home_mode(args)
    fleet = _fleet_config()
    stack = Stack(args.home, hub_id=args.hub_id)
    try:
        home_broker = _home_broker(stack) if home_mode else None
        speedup = 0.0 if home_mode else 60.0 if args.speedup is None else args.speedup
        print(
            "Starting Roost: broker, audit, inference, update, personalization, hub"
            + (", simulator ..." if speedup > 0 else " ...")
        )
        t0 = time.monotonic()
        stack.start_all(args.mqtt_port, _models_repo_env(args), home_broker)
        if metrics is not None:
            stack.start_prometheus(metrics)
        start_fleet_node(stack, fleet)  # only when [fleet] enabled: else no connection
        if speedup > 0:
            stack.start_simulator(speedup, args.areas)
        stack.write_stack_file()
        _print_banner(stack, time.monotonic() - t0, args.areas)
        # A child that dies is restarted with backoff; crash loops are reported.
        supervisor = Supervisor(stack, report=lambda text: print(f"roost run: {text}", flush=True))
        while not stop.wait(0.2):
            supervisor.tick()
        print("\nStopping (draining in-flight decisions) ...")
        return 0
    except StackError as e:
        print(f"roost run: {e}", file=sys.stderr)
        return 1
    finally:
        stack.stop()
        print("Stopped.")


def _home_mode(args: argparse.Namespace) -> bool:
    """A home (Home Assistant configured, or ``--no-simulator``) or the demo (``make run``).
    The simulator never runs in a home: asking for it there is an error."""
    from cli.support import CliError
    from hub.config import HubConfig
    from services.kit.config import ConfigError, load_config

    try:
        hub = load_config(HubConfig, "hub")
    except ConfigError as e:
        raise CliError(str(e)) from e
    home = args.no_simulator or bool(hub.ha_url)
    if home and args.speedup:
        why = "--no-simulator" if args.no_simulator else "Home Assistant is configured (ha_url)"
        raise CliError(f"the simulator runs only in demo mode, and {why}: drop --speedup")
    return home


def _home_broker(stack: Stack) -> HomeBroker:
    """The home broker from ``[mqtt]`` and ``[hub]`` of $ROOST_CONFIG."""
    from cli.broker import BrokerConfigError, MqttConfig, home_broker
    from cli.support import CliError
    from hub.config import HubConfig
    from services.kit.config import ConfigError, load_config

    try:
        hub = load_config(HubConfig, "hub")
        return home_broker(
            stack.home,
            stack.certs_dir,
            load_config(MqttConfig, "mqtt"),
            hub_id=stack.hub_id,
            statestream_base=hub.statestream_base,
            discovery_prefix=hub.ha_discovery_prefix,
        )
    except (ConfigError, BrokerConfigError) as e:
        raise CliError(str(e)) from e


def _metrics_sync_config() -> MetricsConfig | None:
    """``[metrics]`` of $ROOST_CONFIG (env ROOST_METRICS_*), checked before anything
    starts; None unless remote_write_url is set (then no Prometheus runs)."""
    from cli.prometheus_config import MetricsConfig, check_remote_write_url, load_allow_list
    from cli.support import CliError
    from services.kit.config import load_config

    try:
        cfg = load_config(MetricsConfig, "metrics")
        if not cfg.remote_write_url:
            return None
        check_remote_write_url(cfg.remote_write_url)
        load_allow_list(cfg.allow_list)
    except (OSError, ValueError) as e:
        raise CliError(f"metrics sync: {e}") from e
    return cfg


def _fleet_config() -> FleetConfig:
    """``[fleet]`` of $ROOST_CONFIG (env ROOST_FLEET_*), checked before anything starts."""
    from cli.fleet import load_fleet_config
    from cli.support import CliError

    try:
        return load_fleet_config()
    except ValueError as e:
        raise CliError(f"fleet: {e}") from e


def _models_repo_env(args: argparse.Namespace) -> dict[str, str]:
    """The update service's model repository from ``--models-repo``/``--trusted-root``."""
    from cli.support import CliError

    if not args.models_repo:
        return {}
    if args.trusted_root is None:
        raise CliError("--models-repo needs --trusted-root (the repository's root.json)")
    source = args.models_repo
    if "://" not in source:
        source = str(Path(source).resolve())
    return {
        "ROOST_UPDATE_TUF_SOURCE": source,
        "ROOST_UPDATE_TUF_TRUSTED_ROOT": str(args.trusted_root.resolve()),
    }


def _print_banner(stack: Stack, took: float, areas: str) -> None:
    hub_id = stack.hub_id
    audit, inference, hub, update, pers = (
        stack.procs[n].info for n in ("audit", "inference", "hub", "update", "personalization")
    )
    home = "" if stack.home == DEFAULT_HOME.resolve() else f" --home {stack.home}"
    print(f"""
Roost is running ({took:.1f}s to start). A process that dies is restarted. Ctrl-C stops everything.

  MQTT broker      {_broker_line(stack, areas)}
    readings in    roost/readings/<area>/<sensor_kind>
    decisions out  roost/{hub_id}/decisions/<model>/<area>
    hub status     roost/{hub_id}/status
  inference gRPC   127.0.0.1:{inference["port"]}   metrics http://127.0.0.1:{inference["metrics_port"]}/metrics
  audit gRPC       127.0.0.1:{audit["port"]}   metrics http://127.0.0.1:{audit["metrics_port"]}/metrics
  update gRPC      127.0.0.1:{update["port"]}   metrics http://127.0.0.1:{update["metrics_port"]}/metrics
  personalization  127.0.0.1:{pers["port"]}   metrics http://127.0.0.1:{pers["metrics_port"]}/metrics
  hub              metrics http://127.0.0.1:{hub["metrics_port"]}/metrics{_metrics_sync_line(stack)}{_fleet_line(stack)}
  logs             {stack.home / "log"}/

Watch the decisions:   .venv/bin/roost{home} tail
Home Assistant:        .venv/bin/roost{home} ha setup    (what to enter in HA's MQTT integration)
Health of everything:  .venv/bin/roost{home} status
Models and rollouts:   .venv/bin/roost{home} models status
The decision log:      .venv/bin/roost{home} audit tail
Privacy budget:        .venv/bin/roost{home} personalize budget
""")


def _broker_line(stack: Stack, areas: str) -> str:
    home = stack.broker_home
    if home is None:
        simulated = f"; simulator: area '{areas}'" if "simulator" in stack.procs else ""
        return f"127.0.0.1:{stack.broker_port}   (demo: anonymous, local only{simulated})"
    from cli.broker import listen_addresses

    where = ", ".join(listen_addresses(home.config))
    tls = f", TLS on port {home.config.tls_port}" if home.tls else ""
    return f"port {stack.broker_port} on {where}{tls}   (home: a login per client)"


def _metrics_sync_line(stack: Stack) -> str:
    if "prometheus" not in stack.procs:
        return ""
    info = stack.procs["prometheus"].info
    return (
        f"\n  prometheus       http://127.0.0.1:{info['http_port']}/targets"
        f"   remote_write (allow-listed series) -> {info['remote_write']}"
    )


def _fleet_line(stack: Stack) -> str:
    if "supernode" not in stack.procs:
        return "\n  fleet learning   off ([fleet] enabled = false: no fleet connection)"
    return f"\n  fleet learning   on: SuperNode -> {stack.procs['supernode'].info['superlink']}"


def _load_stack(home: Path) -> dict[str, object]:
    from cli.stack import STACK_FILE

    path = home / "run" / STACK_FILE
    if not path.is_file():
        raise SystemExit(f"no running stack found ({path} missing); start one with `make run`")
    data: dict[str, object] = json.loads(path.read_text())
    return data


def _cmd_status(args: argparse.Namespace) -> int:
    from cli.status import check_stack, render

    results = check_stack(_load_stack(args.home), timeout=args.timeout)
    print(render(results))
    return 0 if all(r.ok for r in results) else 1


def _cmd_tail(args: argparse.Namespace) -> int:
    import asyncio

    from cli.broker import stack_login
    from cli.status import tail_decisions

    stack = _load_stack(args.home)
    broker = stack["broker"]
    assert isinstance(broker, dict)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            tail_decisions(
                broker["host"],
                int(broker["port"]),
                str(stack["hub_id"]),
                args.limit,
                stack_login(broker),
            )
        )
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    import importlib

    module = "hub.__main__" if args.role == "hub" else f"services.{args.role}.__main__"
    main: Callable[[], None] = importlib.import_module(module).main
    main()
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from cli.simulate import main

    return main(args.rest)


def _cmd_models_list(args: argparse.Namespace) -> int:
    from models.manifest import MANIFEST_FILE, load_manifest, shipped_models_dir

    root = args.model_dir or shipped_models_dir()
    print(f"{'name':11} {'version':8} {'task':15} {'input':8} {'served':22} {'variants':28} sha256")
    for path in sorted(root.glob(f"*/{MANIFEST_FILE}")):
        m = load_manifest(path.parent)
        shape = "x".join(str(d) for d in m.input.shape)
        variants = ", ".join(f"{k} {v.size_bytes / 1024:.1f} kB" for k, v in m.variants.items())
        print(
            f"{m.name:11} {m.version:8} {m.task_kind:15} {shape:8} {m.file:22} "
            f"{variants or '-':28} {m.sha256[:16]}"
        )
    return 0


def _cmd_models_run(args: argparse.Namespace) -> int:
    import os

    from models import tasks
    from models.datasets import data_dir_from_env

    entry = tasks.train_main if args.models_command == "train" else tasks.evaluate_main
    try:
        main = entry(args.task)
    except ModuleNotFoundError as e:
        print(f"roost models {args.models_command}: {e}", file=sys.stderr)
        print(
            "training needs the 'train' extra: make models (or pip install -e '.[train]')",
            file=sys.stderr,
        )
        return 2
    # The data location ($ROOST_DATA_DIR or ../shared/data), read once here; a
    # --data-dir in the recipe's own arguments comes later and wins.
    data_dir = data_dir_from_env(os.environ)
    return main((["--data-dir", str(data_dir)] if data_dir else []) + args.rest)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="roost", description="Roost smart-home AI hub")
    p.add_argument(
        "--home",
        type=Path,
        default=DEFAULT_HOME,
        help="state directory: certs, data, logs (default: ./var)",
    )
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="start broker, services, hub (and, demo: simulator)")
    run.add_argument(
        "--speedup",
        type=float,
        default=None,
        help="demo: simulator replay speed-up (default 60; 0: no simulator)",
    )
    run.add_argument(
        "--no-simulator",
        action="store_true",
        help="home mode (also when ha_url is configured): no simulator; the broker on a "
        "stable port ([mqtt] port, 1883) and interfaces ([mqtt] listen), with logins",
    )
    run.add_argument("--areas", default="office", help="comma-separated areas to simulate")
    run.add_argument(
        "--models-repo",
        help="signed model repository for updates: a directory or an http(s):// URL",
    )
    run.add_argument(
        "--trusted-root",
        type=Path,
        help="that repository's root.json, as its publisher handed it over (trust anchor)",
    )
    run.add_argument("--hub-id", default="local")
    run.add_argument(
        "--mqtt-port",
        type=int,
        default=0,
        help="broker port (default: home [mqtt] port, 1883; demo: a free one)",
    )
    run.set_defaults(func=_cmd_run)

    st = sub.add_parser("status", help="health of every process of the running stack")
    st.add_argument("--timeout", type=float, default=2.0)
    st.set_defaults(func=_cmd_status)

    tail = sub.add_parser("tail", help="print decisions as the hub publishes them")
    tail.add_argument("--limit", type=int, default=0, help="stop after N decisions")
    tail.set_defaults(func=_cmd_tail)

    serve = sub.add_parser("serve", help="run one process (for k3s and manual setups)")
    serve.add_argument("role", choices=["hub", "inference", "audit", "update", "personalization"])
    serve.set_defaults(func=_cmd_serve)

    sim = sub.add_parser("simulate", help="replay a household stream to MQTT", add_help=False)
    sim.add_argument("rest", nargs=argparse.REMAINDER)
    sim.set_defaults(func=_cmd_simulate)

    from cli import audit, certs, fleet, ha, personalize

    certs.add_parser(sub, DEFAULT_HOME / "certs")
    audit.add_parser(sub)
    fleet.add_parser(sub)
    personalize.add_parser(sub)
    ha.add_parser(sub)

    models = sub.add_parser("models", help="model artifacts")
    msub = models.add_subparsers(dest="models_command", required=True)
    mlist = msub.add_parser("list", help="list the shipped models")
    mlist.add_argument("--model-dir", type=Path, default=None)
    mlist.set_defaults(func=_cmd_models_list)
    from models.tasks import TASKS

    for action, text in (
        ("train", "train a model and write its artifacts"),
        ("evaluate", "evaluate a shipped model on its test data"),
    ):
        cmd = msub.add_parser(action, help=text, add_help=False)
        cmd.add_argument("task", choices=TASKS)
        cmd.add_argument("rest", nargs=argparse.REMAINDER, help="passed to the recipe")
        cmd.set_defaults(func=_cmd_models_run)
    from cli import models as models_commands

    models_commands.add_commands(msub)
    return p


def _passthrough(argv: Sequence[str]) -> int | None:
    """``roost [--home H] simulate ARGS``: ARGS go to ``cli.simulate`` untouched
    (argparse's REMAINDER refuses them when the first one is an option, e.g. --port)."""
    i = 0
    while i < len(argv) and argv[i].startswith("--home"):
        i += 2 if argv[i] == "--home" else 1
    if i < len(argv) and argv[i] == "simulate":
        return _cmd_simulate(argparse.Namespace(rest=list(argv[i + 1 :])))
    return None


def main(argv: Sequence[str] | None = None) -> int:
    from cli.support import CliError

    argv = list(sys.argv[1:] if argv is None else argv)
    passed = _passthrough(argv)
    if passed is not None:
        return passed
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except CliError as e:
        print(f"roost {args.command}: {e}", file=sys.stderr)
        return 2
    return result


if __name__ == "__main__":
    sys.exit(main())
