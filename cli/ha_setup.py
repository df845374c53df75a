"""``roost ha setup``: what to enter in Home Assistant's MQTT integration, checked.

Reads the running stack (``<home>/run/stack.json``, written by ``roost run``), prints the
broker address, port, username, password and TLS settings Home Assistant needs, then
connects with exactly those credentials and waits for the hub's retained status: the same
path Home Assistant will take (the advertised address, not only 127.0.0.1).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
from pathlib import Path
from typing import Any

import aiomqtt

from cli.broker import HA_CLIENT, SENSORS_CLIENT, BrokerFiles, MqttConfig, advertised_host
from cli.support import CliError
from hub import mqtt
from hub.topics import status_topic

DEMO_MODE = (
    "the running stack is the demo (anonymous broker on 127.0.0.1, a new port each start, "
    "simulated readings): Home Assistant cannot use it. Configure ha_url in [hub] or start "
    "`roost run --no-simulator` (docs/home-assistant.md)"
)


def _running_broker(home: Path) -> tuple[dict[str, Any], str]:
    path = home / "run" / "stack.json"
    if not path.is_file():
        raise CliError(f"no running stack ({path} missing): start it with `roost run`")
    stack = json.loads(path.read_text())
    broker: dict[str, Any] = stack["broker"]
    if broker.get("mode") != "home":
        raise CliError(DEMO_MODE)
    return broker, str(stack["hub_id"])


def instructions(host: str, broker: dict[str, Any], password: str, sensors: Path) -> str:
    tls_port = int(broker.get("tls_port") or 0)
    lines = [
        "In Home Assistant: Settings > Devices & services > Add integration > MQTT, then enter:",
        "",
        f"  Broker     {host}",
        f"  Port       {tls_port or broker['port']}",
        f"  Username   {HA_CLIENT}",
        f"  Password   {password}",
    ]
    if tls_port:
        lines += [
            "  Advanced options (tick it, then Submit):",
            "    Broker certificate validation   Custom",
            f"    CA certificate file             upload {broker['tls_ca']}",
            "    Client certificate              (none)",
            "    MQTT transport                  TCP",
        ]
    else:
        lines += [
            "  TLS        off (no Advanced options needed; set [mqtt] tls_port for TLS)",
        ]
    lines += [
        "",
        "Keep discovery on with the prefix 'homeassistant'. Devices that publish readings "
        f"straight to MQTT: username '{SENSORS_CLIENT}', password in {sensors}.",
    ]
    return "\n".join(lines)


async def check_connection(
    host: str, port: int, password: str, hub_id: str, *, ca: Path | None = None
) -> str:
    """Connect as Home Assistant and read the hub's retained status ("online")."""
    tls = ssl.create_default_context(cafile=str(ca)) if ca is not None else None
    async with mqtt.client(
        host,
        port,
        username=HA_CLIENT,
        password=password,
        identifier=f"roost-ha-setup-{id(object())}",
        tls_context=tls,
    ) as client:
        await client.subscribe(status_topic(hub_id), qos=1)
        async for message in client.messages:
            payload = message.payload
            return payload.decode() if isinstance(payload, bytes) else str(payload)
    raise aiomqtt.MqttError("the broker closed the connection")


def _cmd_setup(args: argparse.Namespace) -> int:
    broker, hub_id = _running_broker(args.home)
    config = MqttConfig(listen=tuple(broker["listen"]), host=broker.get("advertised_host", ""))
    host = args.host or advertised_host(config)
    files = BrokerFiles(Path(broker["credentials"]))
    password = files.password(HA_CLIENT)
    print(instructions(host, broker, password, files.password_file(SENSORS_CLIENT)))
    tls_port = int(broker.get("tls_port") or 0)
    ports: list[tuple[int, Path | None]] = [(int(broker["port"]), None)]
    if tls_port:
        ports.append((tls_port, Path(broker["tls_ca"])))
    ok = True
    print()
    for port, ca in ports:
        what = f"{host}:{port}{' (TLS)' if ca else ''} as '{HA_CLIENT}'"
        try:
            check = check_connection(host, port, password, hub_id, ca=ca)
            status = asyncio.run(asyncio.wait_for(check, args.timeout))
        except (aiomqtt.MqttError, OSError, TimeoutError) as e:
            ok = False
            print(f"FAIL  {what}: {e or type(e).__name__}")
            continue
        ok = ok and status == "online"
        print(f"{'OK  ' if status == 'online' else 'FAIL'}  {what}: connected; hub is {status}")
    return 0 if ok else 1


def add_command(hsub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    setup = hsub.add_parser("setup", help="what to enter in HA's MQTT integration, checked")
    setup.add_argument("--host", default="", help="the address HA uses (default: advertised)")
    setup.add_argument("--timeout", type=float, default=10.0, help="seconds for the check")
    setup.set_defaults(func=_cmd_setup)
