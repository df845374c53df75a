"""The MQTT broker of ``roost run``: demo mode, or a broker a home can use.

* **Demo mode** (the README's ``make run``: no Home Assistant configured, simulator on):
  mosquitto on 127.0.0.1, a free port each start, anonymous.
* **Home mode** (``ha_url`` set in ``[hub]``, or ``roost run --no-simulator``): mosquitto on
  a stable port (``[mqtt] port``, 1883) on the configured interfaces (``[mqtt] listen``),
  anonymous access off, one generated password per client (``hub``, ``homeassistant``,
  ``sensors``) and an ACL per client; optionally a TLS listener (``[mqtt] tls_port``) with
  a certificate from the hub's local CA. The simulator never runs in home mode.

Credentials live in ``<home>/data/mqtt/``: ``passwords/<client>`` (the plain password, 0600,
generated on first start and kept), ``mosquitto.passwd`` (mosquitto's PBKDF2-SHA512 hashes,
0600) and ``mosquitto.acl``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import pwd
import secrets
import socket
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hub import mqtt
from services.kit.certs import TlsFiles, ensure_leaf
from services.kit.files import write_atomic

HUB_CLIENT = "hub"
HA_CLIENT = "homeassistant"
SENSORS_CLIENT = "sensors"
CLIENTS = (HUB_CLIENT, HA_CLIENT, SENSORS_CLIENT)
# Any interface: the hub reaches the broker on 127.0.0.1 through it.
ANY_ADDRESS = "0.0.0.0"
LOOPBACK = "127.0.0.1"
# mosquitto_passwd's defaults (mosquitto 2.0): PBKDF2-SHA512, 101 rounds, 12-byte salt.
PBKDF2_ROUNDS = 101
SALT_BYTES = 12


class BrokerConfigError(ValueError):
    """The ``[mqtt]`` configuration or the credential files cannot be used."""


@dataclass(frozen=True)
class MqttConfig:
    """``[mqtt]`` of ``$ROOST_CONFIG`` (env ``ROOST_MQTT_*``): the broker in home mode."""

    port: int = 1883
    # Interfaces to listen on; "0.0.0.0" = all (Home Assistant on another machine).
    listen: tuple[str, ...] = (ANY_ADDRESS,)
    # A TLS listener too (e.g. 8883), certificate from the hub's CA; 0 = none.
    tls_port: int = 0
    # The address Home Assistant should use (`roost ha setup`); default: this machine's
    # address on the local network. Also a name of the TLS certificate.
    host: str = ""


def check(config: MqttConfig) -> None:
    if not 0 < config.port < 65536:
        raise BrokerConfigError(f"[mqtt] port {config.port} is not a TCP port")
    if config.tls_port and (not 0 < config.tls_port < 65536 or config.tls_port == config.port):
        raise BrokerConfigError(f"[mqtt] tls_port {config.tls_port}: a TCP port other than port")
    if not config.listen:
        raise BrokerConfigError("[mqtt] listen is empty: give at least one address")


def listen_addresses(config: MqttConfig) -> list[str]:
    """Where mosquitto listens: the configured interfaces, plus 127.0.0.1 for the hub
    unless an address covers it already."""
    addresses = list(dict.fromkeys(config.listen))
    if ANY_ADDRESS not in addresses and LOOPBACK not in addresses:
        addresses.append(LOOPBACK)
    return addresses


@dataclass(frozen=True)
class BrokerFiles:
    """The credential files of a home broker, under ``<home>/data/mqtt``."""

    root: Path

    def password_file(self, client: str) -> Path:
        return self.root / "passwords" / client

    @property
    def passwd_file(self) -> Path:
        return self.root / "mosquitto.passwd"

    @property
    def acl_file(self) -> Path:
        return self.root / "mosquitto.acl"

    def password(self, client: str) -> str:
        return read_password(self.password_file(client))


def read_password(path: Path) -> str:
    """The password in ``path``; refused if others may read the file."""
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise BrokerConfigError(
            f"{path} is readable by other users (mode {stat.S_IMODE(mode):o}): the password "
            "may have leaked; delete it (a new one is generated) or chmod 600 it"
        )
    return path.read_text().strip()


def password_hash(password: str, salt: bytes | None = None) -> str:
    """mosquitto's ``$7$`` password-file hash (what ``mosquitto_passwd`` writes)."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ROUNDS)
    return (
        f"$7${PBKDF2_ROUNDS}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"
    )


def ensure_credentials(files: BrokerFiles) -> dict[str, str]:
    """Each client's password, generated the first time (and whenever its file is missing
    or empty), kept afterwards; then mosquitto's password file. Returns client -> password."""
    directory = files.password_file(HUB_CLIENT).parent
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(files.root, 0o700)
    os.chmod(directory, 0o700)
    passwords: dict[str, str] = {}
    for client in CLIENTS:
        path = files.password_file(client)
        current = read_password(path) if path.is_file() else ""
        if not current:
            current = secrets.token_urlsafe(24)
            write_atomic(path, (current + "\n").encode(), 0o600)
        passwords[client] = current
    lines = "".join(f"{c}:{password_hash(p)}\n" for c, p in passwords.items())
    write_atomic(files.passwd_file, lines.encode(), 0o600)
    return passwords


def acl(hub_id: str, statestream_base: str, discovery_prefix: str) -> str:
    """What each client may do. The hub: Roost's topics, HA discovery, the statestream.
    Home Assistant: discovery and its birth message, its statestream, reading the hub's
    topics and sending the hub's entity commands. Sensors: publish readings, nothing else."""
    for what, value in (
        ("hub_id", hub_id),
        ("statestream_base", statestream_base),
        ("ha_discovery_prefix", discovery_prefix),
    ):
        if not value or any(c in value for c in "#+\n\r\0") or value.strip() != value:
            # A wildcard or a line break would widen (or rewrite) the ACL.
            raise BrokerConfigError(f"{what} {value!r} cannot be part of an MQTT ACL")
    hub_topics = f"roost/{hub_id}"
    return (
        f"user {HUB_CLIENT}\n"
        "topic readwrite roost/#\n"
        f"topic readwrite {discovery_prefix}/#\n"
        f"topic read {statestream_base}/#\n"
        f"\nuser {HA_CLIENT}\n"
        f"topic readwrite {discovery_prefix}/#\n"
        f"topic write {statestream_base}/#\n"
        f"topic read {hub_topics}/#\n"
        f"topic write {hub_topics}/ha/cmd/#\n"
        f"\nuser {SENSORS_CLIENT}\n"
        "topic write roost/readings/#\n"
    )


def home_conf(
    config: MqttConfig, port: int, files: BrokerFiles, tls: TlsFiles | None = None
) -> str:
    """The listener and authentication lines of mosquitto.conf in home mode."""
    lines = [
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {files.passwd_file}",
        f"acl_file {files.acl_file}",
    ]
    lines += [f"listener {port} {address}" for address in listen_addresses(config)]
    if tls is not None:
        for address in config.listen:
            lines += [
                f"listener {config.tls_port} {address}",
                f"cafile {tls.ca}",
                f"certfile {tls.cert}",
                f"keyfile {tls.key}",
            ]
    return "\n".join(lines) + "\n"


def mosquitto_conf(port: int, run_dir: Path, home: HomeBroker | None) -> str:
    """mosquitto.conf of ``roost run``: demo (127.0.0.1, anonymous) or ``home``."""
    listeners = (
        f"listener {port} {LOOPBACK}\nallow_anonymous true\n"
        if home is None
        else home_conf(home.config, port, home.files, home.tls)
    )
    return (
        listeners
        # The hub's persistent session (its subscriptions, the QoS 1 readings queued
        # for it) survives a broker restart: saved in the run dir every second, and
        # at a clean stop.
        + f"persistence true\npersistence_location {run_dir}/\n"
        "autosave_interval 1\n"
        # Not a line per save (information): errors, warnings, connections (notice).
        "log_type error\nlog_type warning\nlog_type notice\n"
        # Run as root, mosquitto would switch to the user `mosquitto` and could not
        # write its store here: it stays the user that started it.
        f"user {pwd.getpwuid(os.getuid()).pw_name}\n"
        "max_queued_messages 100000\nmax_inflight_messages 0\n"
        # Keep QoS 0 readings (the simulator's) for the hub's persistent session too.
        "queue_qos0_messages true\n"
        # Small decision messages must not wait for Nagle + delayed ACK (~40 ms).
        "set_tcp_nodelay true\n"
    )


@dataclass(frozen=True)
class HomeBroker:
    """Everything ``Stack.start_broker`` needs for a home broker."""

    config: MqttConfig
    files: BrokerFiles
    acl: str
    tls: TlsFiles | None = None

    def prepare(self) -> None:
        """Credentials (kept across starts) and the ACL file, before mosquitto starts."""
        ensure_credentials(self.files)
        write_atomic(self.files.acl_file, self.acl.encode(), 0o600)


TLS_STEM = "mqtt"


def advertised_host(config: MqttConfig) -> str:
    """The address Home Assistant should use: ``[mqtt] host``, else the first specific
    non-loopback interface listened on, else (all interfaces) this machine's address on
    the local network, else 127.0.0.1."""
    if config.host:
        return config.host
    specific = [a for a in config.listen if a not in (ANY_ADDRESS, LOOPBACK)]
    if specific:
        return specific[0]
    if ANY_ADDRESS not in config.listen:
        return LOOPBACK  # HA on this machine
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            # No packet is sent: the kernel only picks the route's source address.
            s.connect(("192.0.2.1", 9))
            return str(s.getsockname()[0])
        except OSError:
            return LOOPBACK


def ensure_tls(certs_dir: Path, config: MqttConfig) -> TlsFiles:
    """The broker's certificate from the hub's CA, (re-)issued when it does not name the
    advertised host, this machine's name and the listened addresses."""
    names = {advertised_host(config), socket.gethostname(), "localhost", *config.listen} - {
        ANY_ADDRESS
    }
    return ensure_leaf(certs_dir, TLS_STEM, names)


def home_broker(
    home: Path,
    certs_dir: Path,
    config: MqttConfig,
    *,
    hub_id: str,
    statestream_base: str,
    discovery_prefix: str,
) -> HomeBroker:
    """The home broker of a stack under ``home`` (credentials in ``home/data/mqtt``)."""
    check(config)
    return HomeBroker(
        config,
        BrokerFiles(home / "data" / "mqtt"),
        acl(hub_id, statestream_base, discovery_prefix),
        ensure_tls(certs_dir, config) if config.tls_port else None,
    )


def hub_login_env(home: HomeBroker | None) -> dict[str, str]:
    """The hub's broker login as its environment (the password stays in its file)."""
    if home is None:
        return {}
    return {
        "ROOST_HUB_MQTT_USERNAME": HUB_CLIENT,
        "ROOST_HUB_MQTT_PASSWORD_FILE": str(home.files.password_file(HUB_CLIENT)),
    }


def describe_broker(port: int, home: HomeBroker | None) -> dict[str, Any]:
    """The broker entry of ``run/stack.json`` (``roost status``, ``tail``, ``ha setup``)."""
    broker: dict[str, Any] = {"host": LOOPBACK, "port": port, "mode": "demo"}
    if home is not None:
        broker.update(
            mode="home",
            listen=list(home.config.listen),
            advertised_host=home.config.host,
            tls_port=home.config.tls_port if home.tls else 0,
            tls_ca=str(home.tls.ca) if home.tls else "",
            credentials=str(home.files.root),
        )
    return broker


def stack_login(broker: Mapping[str, Any], client: str = HUB_CLIENT) -> dict[str, Any]:
    """``mqtt.client`` login arguments of ``client`` for the broker of a running stack
    (its ``stack.json`` entry): none in demo mode."""
    if broker.get("mode") != "home":
        return {}
    return mqtt.broker_login(
        client, BrokerFiles(Path(broker["credentials"])).password_file(client), None
    )
