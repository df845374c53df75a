"""The broker a home can use, enforced by the real mosquitto (cli/broker.py).

A home broker exactly as ``roost run`` starts it in home mode (``Stack.start_broker`` with
``home_broker``): anonymous clients and wrong passwords are refused, each generated login
connects (plain and TLS), and each client is held to its topics. "Nothing was delivered"
is decided without waiting: after the last publish, the client completes a QoS 1 publish of
its own; the broker queues what it delivers to a client in order, so anything delivered
would be in the client's queue before that acknowledgement. Each check has a control
client that may read the same topics and does receive them the same way.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from cli.broker import HA_CLIENT, HUB_CLIENT, SENSORS_CLIENT, HomeBroker, MqttConfig, home_broker
from cli.ha_setup import check_connection, instructions
from cli.stack import Stack, StackError, free_port
from hub import mqtt
from services.kit.certs import ensure_certs
from tests.support.stacks import require_mosquitto

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

HUB_ID = "h1"
STATESTREAM = "ha_stream"
READING = "roost/readings/kitchen/temperature"
COMMAND = f"roost/{HUB_ID}/ha/cmd/learning_mode"
DECISION = f"roost/{HUB_ID}/decisions/occupancy/kitchen"
STATUS = f"roost/{HUB_ID}/status"
DISCOVERY = f"homeassistant/button/roost_{HUB_ID}/learn_now_occupancy/config"
STATESTREAM_STATE = f"{STATESTREAM}/sensor/kitchen_temperature/state"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, HomeBroker]]:
    require_mosquitto()
    home = tmp_path_factory.mktemp("home_broker")
    with Stack(home, hub_id=HUB_ID) as stack:
        config = MqttConfig(port=free_port(), listen=("127.0.0.1",), tls_port=free_port())
        broker = home_broker(
            stack.home,
            stack.certs_dir,
            config,
            hub_id=HUB_ID,
            statestream_base=STATESTREAM,
            discovery_prefix="homeassistant",
        )
        stack.start_broker(home=broker)
        yield stack, broker


def _client(
    stack: Stack, user: str | None, password: str | None = None, port: int = 0, **kw: object
) -> aiomqtt.Client:
    return mqtt.client(
        "127.0.0.1",
        port or stack.broker_port,
        username=user,
        password=password,
        identifier=f"test-{user}-{id(object())}",
        **kw,
    )


def login(stack: Stack, broker: HomeBroker, user: str) -> aiomqtt.Client:
    return _client(stack, user, broker.files.password(user))


async def _sync(client: aiomqtt.Client) -> None:
    """A QoS 1 round trip: everything the broker delivered before is now queued."""
    await client.publish(READING, b"0", qos=1)


def test_anonymous_and_wrong_logins_are_refused(broker: tuple[Stack, HomeBroker]) -> None:
    stack, home = broker

    async def connect(user: str | None, password: str | None) -> None:
        async with _client(stack, user, password):
            pass

    attempts = [
        (None, None),  # anonymous
        (HUB_CLIENT, "wrong"),
        (HUB_CLIENT, home.files.password(SENSORS_CLIENT)),  # another client's password
        (HA_CLIENT, ""),
        ("admin", home.files.password(HUB_CLIENT)),  # an unknown user
    ]
    for user, password in attempts:
        with pytest.raises(aiomqtt.MqttError, match=r"[Nn]ot authori[sz]ed|[Bb]ad user"):
            asyncio.run(connect(user, password))


def test_each_generated_login_connects_plain_and_tls(broker: tuple[Stack, HomeBroker]) -> None:
    stack, home = broker
    assert home.tls is not None
    tls = ssl.create_default_context(cafile=str(home.tls.ca))

    async def connect(user: str, **kw: object) -> None:
        async with _client(stack, user, home.files.password(user), **kw) as client:
            await client.subscribe("roost/readings/#", qos=1)

    for user in (HUB_CLIENT, HA_CLIENT, SENSORS_CLIENT):
        asyncio.run(connect(user))
    tls_port = home.config.tls_port
    asyncio.run(connect(HA_CLIENT, port=tls_port, tls_context=tls))

    async def tls_client(user: str | None, password: str | None, context: ssl.SSLContext) -> None:
        async with mqtt.client(
            "127.0.0.1", tls_port, username=user, password=password, tls_context=context
        ):
            pass

    # TLS does not admit anonymous clients either, and a server not signed by the hub's
    # CA is not trusted (the default trust store does not know the hub's CA).
    with pytest.raises(aiomqtt.MqttError):
        asyncio.run(tls_client(None, None, tls))
    with pytest.raises(aiomqtt.MqttError):
        asyncio.run(
            tls_client(HA_CLIENT, home.files.password(HA_CLIENT), ssl.create_default_context())
        )


def test_sensors_only_publish_readings(broker: tuple[Stack, HomeBroker]) -> None:
    """A stolen sensor login cannot command the hub, forge decisions, status, discovery or
    Home Assistant states; its readings do reach the hub."""
    stack, home = broker
    forged = [COMMAND, DECISION, STATUS, DISCOVERY, STATESTREAM_STATE, f"roost/{HUB_ID}/health"]

    async def run() -> list[str]:
        async with login(stack, home, HUB_CLIENT) as hub:
            for pattern in ("roost/#", "homeassistant/#", f"{STATESTREAM}/#"):
                await hub.subscribe(pattern, qos=1)
            async with login(stack, home, SENSORS_CLIENT) as sensors:
                for topic in forged:
                    await sensors.publish(topic, b"forged", qos=1)
                await sensors.publish(READING, b"21.5", qos=1)
            got = []
            async with asyncio.timeout(20):
                async for message in hub.messages:
                    if message.retain:  # e.g. the status an earlier test left
                        continue
                    got.append(str(message.topic))
                    if str(message.topic) == READING:
                        return got
        raise AssertionError("unreachable")

    assert asyncio.run(run()) == [READING]


def test_sensors_read_nothing(broker: tuple[Stack, HomeBroker]) -> None:
    stack, home = broker

    async def queued(user: str) -> list[str]:
        async with login(stack, home, user) as client:
            for pattern in ("#", STATUS, DECISION, COMMAND, "roost/readings/#"):
                await client.subscribe(pattern, qos=1)
            async with login(stack, home, HUB_CLIENT) as hub:
                await hub.publish(STATUS, b"online", qos=1, retain=True)
                await hub.publish(DECISION, b'{"label": "vacant"}', qos=1)
            await _sync(client)
            topics = []
            while len(client.messages):
                topics.append(str((await anext(aiter(client.messages))).topic))
            return topics

    assert asyncio.run(queued(SENSORS_CLIENT)) == []
    # The control: Home Assistant may read the hub's topics, and by the same round trip
    # has them queued (retained status, the decision; not readings).
    assert set(asyncio.run(queued(HA_CLIENT))) == {STATUS, DECISION}


def test_home_assistant_gets_what_discovery_and_statestream_need(
    broker: tuple[Stack, HomeBroker],
) -> None:
    """HA: discovery and its birth message, its statestream, entity commands. Not readings,
    decisions or the hub's status (a forged decision would be acted on)."""
    stack, home = broker

    async def run() -> list[str]:
        async with login(stack, home, HUB_CLIENT) as hub:
            for pattern in ("roost/#", f"{STATESTREAM}/#", "homeassistant/status"):
                await hub.subscribe(pattern, qos=1)
            # The hub's discovery config, as HA subscribes to it.
            async with login(stack, home, HA_CLIENT) as ha:
                await ha.subscribe("homeassistant/#", qos=1)
                await hub.publish(DISCOVERY, b"{}", qos=1, retain=True)
                async with asyncio.timeout(20):
                    async for message in ha.messages:
                        if str(message.topic) == DISCOVERY:
                            break
                for topic in (READING, DECISION, STATUS, "roost/other_hub/ha/cmd/x"):
                    await ha.publish(topic, b"forged", qos=1)
                await ha.publish("homeassistant/status", b"online", qos=1)
                await ha.publish(STATESTREAM_STATE, b"21.5", qos=1)
                await ha.publish(COMMAND, b"paused", qos=1)
            await hub.publish(DISCOVERY, b"", qos=1, retain=True)
            got = []
            async with asyncio.timeout(20):
                async for message in hub.messages:
                    if message.retain:  # e.g. the status an earlier test left
                        continue
                    got.append(str(message.topic))
                    if str(message.topic) == COMMAND:
                        return got
        raise AssertionError("unreachable")

    assert asyncio.run(run()) == ["homeassistant/status", STATESTREAM_STATE, COMMAND]


def test_demo_broker_stays_anonymous_and_local(tmp_path: Path) -> None:
    """`make run`: 127.0.0.1, a free port, anonymous (no credentials are made)."""
    require_mosquitto()
    with Stack(tmp_path) as stack:
        port = stack.start_broker()

        async def connect() -> None:
            async with mqtt.client("127.0.0.1", port) as client:
                await client.publish(READING, b"1", qos=1)

        asyncio.run(connect())
        assert stack.describe()["broker"] == {"host": "127.0.0.1", "port": port, "mode": "demo"}
        assert not (tmp_path / "data" / "mqtt").exists()
        conf = (tmp_path / "run" / "mosquitto.conf").read_text()
        assert f"listener {port} 127.0.0.1\n" in conf


def test_a_port_already_taken_is_refused_before_any_login_is_sent(tmp_path: Path) -> None:
    """Something else on the home port (another broker, an impostor) would get the hub's
    password at its first connect: `roost run` refuses to start instead."""
    require_mosquitto()
    with socket.socket() as squatter, Stack(tmp_path, hub_id=HUB_ID) as stack:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = int(squatter.getsockname()[1])
        broker = home_broker(
            stack.home,
            stack.certs_dir,
            MqttConfig(port=port, listen=("127.0.0.1",)),
            hub_id=HUB_ID,
            statestream_base=STATESTREAM,
            discovery_prefix="homeassistant",
        )
        with pytest.raises(StackError, match=f"port {port} is in use"):
            stack.start_broker(home=broker)
        assert "mosquitto" not in stack.procs


def test_ha_setup_checks_the_tls_listener(broker: tuple[Stack, HomeBroker], tmp_path: Path) -> None:
    """`roost ha setup`'s check over TLS: the hub's CA verifies the broker for the
    advertised address; another hub's CA does not."""
    stack, home = broker
    assert home.tls is not None
    password = home.files.password(HA_CLIENT)

    async def status_online() -> None:
        async with login(stack, home, HUB_CLIENT) as hub:
            await hub.publish(STATUS, b"online", qos=1, retain=True)

    asyncio.run(status_online())
    check = check_connection("127.0.0.1", home.config.tls_port, password, HUB_ID, ca=home.tls.ca)
    assert asyncio.run(asyncio.wait_for(check, 20)) == "online"
    stranger = tmp_path / "other-certs"
    ensure_certs(stranger, "other", roles=())
    check = check_connection(
        "127.0.0.1", home.config.tls_port, password, HUB_ID, ca=stranger / "ca.pem"
    )
    with pytest.raises((aiomqtt.MqttError, ssl.SSLError)):
        asyncio.run(asyncio.wait_for(check, 20))
    text = instructions(
        "127.0.0.1",
        {"port": stack.broker_port, "tls_port": home.config.tls_port, "tls_ca": str(home.tls.ca)},
        password,
        home.files.password_file(SENSORS_CLIENT),
    )
    assert f"Port       {home.config.tls_port}" in text
    assert f"upload {home.tls.ca}" in text
