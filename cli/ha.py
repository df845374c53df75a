"""``roost ha check|import|uninstall``: Roost and Home Assistant.

* ``check``: per model and area, which Home Assistant entity feeds which model input
  (from the registries with ``ha_mapping = "auto"``, plus ``statestream_entities``),
  and which inputs are unmapped.
* ``import``: bootstrap the personalization store from HA history (explicit entities:
  the mapped inputs of one model and area, and a label entity).
* ``uninstall``: clear every retained discovery config of the hub, so HA removes the Roost
  device and its entities, then Roost's retained HA state topics.

The hub configuration is read like the hub reads it (``$ROOST_CONFIG``, ``ROOST_HUB_*``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from cli.support import CliError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from hub.config import HubConfig
    from hub.ingest import SensorRef
    from roost.personalization.v1 import personalization_service_pb2 as pers_pb

# Models the hub builds windows for (name -> feature spec id); the routine model is
# home-wide (binary sensors, area "home").
SPEC_MODELS = {"occupancy": "occupancy/v1", "comfort": "comfort/v1", "anomaly": "anomaly/v1"}


def _config(args: argparse.Namespace) -> HubConfig:
    from hub.config import HubConfig
    from services.kit.config import load_config

    overrides: dict[str, object] = {}
    if args.ha_url:
        overrides["ha_url"] = args.ha_url
    if args.token_file:
        overrides["ha_token_file"] = args.token_file
    return load_config(HubConfig, "hub", overrides=overrides)


def _client(config: HubConfig) -> object:
    from hub.homeassistant.client import HaClient, HaUnavailable, read_token

    try:
        return HaClient(
            config.ha_url,
            read_token(config.ha_token_file),
            timeout=config.ha_api_timeout_seconds,
        )
    except HaUnavailable as e:
        raise CliError(str(e)) from e


def _mapping(config: HubConfig) -> dict[str, SensorRef]:
    from hub.homeassistant import mapping as ha_mapping
    from hub.homeassistant.client import HaClient, HaUnavailable
    from hub.ingest import parse_entity_map

    explicit = parse_entity_map(config.statestream_entities)
    if config.ha_mapping != "auto":
        return explicit
    client = _client(config)
    assert isinstance(client, HaClient)
    try:
        proposal = ha_mapping.propose(client.registries())
    except HaUnavailable as e:
        raise CliError(str(e)) from e
    return ha_mapping.merge(proposal.mapping, explicit)


def _cmd_check(args: argparse.Namespace) -> int:
    from hub.homeassistant import mapping as ha_mapping
    from hub.windows import HomeEventWindow
    from models.features import spec_by_id

    config = _config(args)
    mapping = _mapping(config)
    specs = {name: spec_by_id(spec) for name, spec in SPEC_MODELS.items()}
    home = {"routine": sorted(HomeEventWindow.kinds)}
    rows = ha_mapping.coverage(specs, mapping, home)
    print(f"mapping: {config.ha_mapping} ({len(mapping)} entities)")
    unmapped = 0
    current = None
    for row in rows:
        if (row.model, row.area) != current:
            current = (row.model, row.area)
            print(f"\n{row.model} / {row.area}")
        if row.entities:
            print(f"  {row.kind:<22} <- {', '.join(row.entities)}")
        else:
            unmapped += 1
            print(f"  {row.kind:<22} UNMAPPED")
    if not rows:
        print("no model input is mapped: give the sensors an area and a device_class in HA")
    print(f"\n{unmapped} unmapped inputs")
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from zoneinfo import ZoneInfo

    from hub.homeassistant.client import (
        DEFAULT_LABEL_MAPS,
        HaClient,
        HaUnavailable,
        build_examples,
        parse_label_map,
    )
    from models.features import spec_by_id

    if args.model not in SPEC_MODELS:
        raise CliError(f"import supports {', '.join(SPEC_MODELS)}")
    config = _config(args)
    spec = spec_by_id(SPEC_MODELS[args.model])
    label_map = (
        parse_label_map(args.label_map)
        if args.label_map
        else DEFAULT_LABEL_MAPS.get(args.model, {})
    )
    if not label_map:
        raise CliError(f"give --label-map for {args.model}")
    by_kind = _input_entities(args, spec.sensor_kinds, _mapping(config))
    client = _client(config)
    assert isinstance(client, HaClient)
    end = datetime.now(UTC)
    start = end - timedelta(days=args.days)
    try:
        history = client.histories([*by_kind.values(), args.label_entity], start, end)
    except HaUnavailable as e:
        raise CliError(str(e)) from e
    examples = build_examples(
        spec,
        {kind: history[entity] for kind, entity in by_kind.items()},
        history[args.label_entity],
        label_map,
        start.timestamp(),
        end.timestamp(),
        ZoneInfo(config.timezone),
        step_seconds=args.step,
    )
    print(f"{len(examples)} labelled windows from {args.days} days of history")
    if args.dry_run or not examples:
        return 0
    target = args.target or config.personalization_target
    if not target:
        raise CliError("no personalization service: set personalization_target or --target")
    added, total = asyncio.run(_add_examples(config, target, args.model, examples))
    print(f"added {added} examples; {total} in the local store for {args.model}")
    return 0


def _input_entities(
    args: argparse.Namespace, sensor_kinds: frozenset[str], mapping: dict[str, SensorRef]
) -> dict[str, str]:
    """Sensor kind -> the HA entity feeding it (mapped in ``args.area`` or household-wide,
    then the ``--entity`` overrides); every input of the model must have one."""
    from hub.ingest import is_household_wide

    by_kind: dict[str, str] = {}
    for entity, ref in sorted(mapping.items()):
        if ref.sensor_kind in sensor_kinds and (
            ref.area == args.area or is_household_wide(ref.sensor_kind)
        ):
            by_kind.setdefault(ref.sensor_kind, entity)
    for item in args.entity or []:
        kind, _, entity = item.partition("=")
        by_kind[kind] = entity
    missing = sorted(sensor_kinds - set(by_kind))
    if missing:
        raise CliError(f"unmapped inputs for {args.model}/{args.area}: {', '.join(missing)}")
    return by_kind


async def _add_examples(
    config: HubConfig, target: str, model: str, examples: Sequence[pers_pb.Example]
) -> tuple[int, int]:
    """Sends the imported examples in chunks; returns (added, total in the store)."""
    from hub.homeassistant.client import chunks
    from roost.personalization.v1 import personalization_service_pb2 as pb
    from roost.personalization.v1 import personalization_service_pb2_grpc as pb_grpc
    from services.kit.auth import Role
    from services.kit.client import aio_channel

    channel = aio_channel(
        target,
        certs_dir=config.certs_dir,
        role=Role.HUB,
        server_role=Role.PERSONALIZATION,
    )
    stub = pb_grpc.PersonalizationServiceStub(channel)
    added = total = 0
    try:
        for batch in chunks(examples):
            resp = await stub.AddExamples(
                pb.AddExamplesRequest(
                    model_name=model, examples=batch, source=pb.LABEL_SOURCE_IMPORT
                ),
                timeout=30.0,
            )
            added += resp.added
            total = resp.total
    finally:
        await channel.close()
    return added, total


def _cmd_uninstall(args: argparse.Namespace) -> int:
    from cli.broker import stack_login
    from hub import mqtt
    from hub.homeassistant.uninstall import Removed, uninstall

    config = _config(args)
    host = args.mqtt_host or config.mqtt_host
    port = args.mqtt_port or config.mqtt_port
    login = mqtt.broker_login(config.mqtt_username, config.mqtt_password_file, None)
    running = args.home / "run" / "stack.json"
    if not (args.mqtt_host or args.mqtt_port or config.mqtt_username) and running.is_file():
        # The broker of the running `roost run`, with the hub's login in home mode.
        broker = json.loads(running.read_text())["broker"]
        host, port, login = broker["host"], int(broker["port"]), stack_login(broker)

    async def run() -> Removed:
        async with mqtt.client(host, port, **login) as client:
            return await uninstall(client, config.ha_discovery_prefix, config.hub_id, args.wait)

    removed = asyncio.run(run())
    print(
        f"removed the Roost hub device ({len(removed.configs)} entity configs, "
        f"{len(removed.states)} states); set ha_discovery = false before restarting the hub, "
        "or it announces itself again"
    )
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ha = sub.add_parser(
        "ha", help="Home Assistant: set up MQTT, check the mapping, import history, uninstall"
    )
    hsub = ha.add_subparsers(dest="ha_command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--ha-url", default="", help="default: ha_url of the hub configuration")
        p.add_argument("--token-file", default="", help="default: ha_token_file")

    check = hsub.add_parser("check", help="which HA entity feeds which model input")
    common(check)
    check.set_defaults(func=_cmd_check)

    imp = hsub.add_parser("import", help="labelled examples from HA history")
    common(imp)
    imp.add_argument("--model", required=True)
    imp.add_argument("--area", required=True)
    imp.add_argument("--label-entity", required=True, help="e.g. binary_sensor.kitchen_presence")
    imp.add_argument("--label-map", default="", help="e.g. on=occupied,off=vacant")
    imp.add_argument("--days", type=float, default=7.0)
    imp.add_argument("--step", type=float, default=60.0, help="seconds between windows")
    imp.add_argument("--entity", action="append", help="override: kind=entity_id")
    imp.add_argument("--target", default="", help="personalization gRPC address")
    imp.add_argument("--dry-run", action="store_true")
    imp.set_defaults(func=_cmd_import)

    un = hsub.add_parser("uninstall", help="remove the Roost device from Home Assistant")
    common(un)
    un.add_argument("--mqtt-host", default="")
    un.add_argument("--mqtt-port", type=int, default=0)
    un.add_argument("--wait", type=float, default=2.0, help="seconds before clearing states")
    un.set_defaults(func=_cmd_uninstall)

    from cli import ha_setup

    ha_setup.add_command(hsub)
