"""The one way Roost opens an MQTT connection (hub, simulator, CLI, tests, bench).

paho-mqtt does not disable Nagle's algorithm; with small messages and QoS 1 that
adds delayed-ACK stalls of tens of milliseconds, so every client sets TCP_NODELAY.
"""

from __future__ import annotations

import socket
from typing import Any

import aiomqtt

SOCKET_OPTIONS = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)


def client(host: str, port: int, **kwargs: Any) -> aiomqtt.Client:
    return aiomqtt.Client(host, port, socket_options=SOCKET_OPTIONS, **kwargs)
