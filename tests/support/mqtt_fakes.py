"""A fake MQTT session for unit tests of the Home Assistant bridge.

``LoopbackClient(deliver)`` records every publish, keeps retained messages like a broker,
and hands messages on subscribed topics to ``deliver`` (the bridge's ``handle``, as the
hub's MQTT loop would): retained ones when subscribing, live ones when published.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import aiomqtt


@dataclass(frozen=True)
class Published:
    topic: str
    payload: bytes
    retain: bool


@dataclass
class LoopbackClient:
    deliver: Callable[[str, bytes], object]
    subscriptions: list[str] = field(default_factory=list)
    published: list[Published] = field(default_factory=list)
    retained: dict[str, bytes] = field(default_factory=dict)

    def _subscribed(self, topic: str) -> bool:
        return any(aiomqtt.Topic(topic).matches(s) for s in self.subscriptions)

    async def subscribe(self, topic: str, qos: int = 0) -> None:
        self.subscriptions.append(topic)
        for t, payload in list(self.retained.items()):
            if aiomqtt.Topic(t).matches(topic):
                self.deliver(t, payload)

    async def publish(
        self, topic: str, payload: bytes = b"", qos: int = 0, retain: bool = False
    ) -> None:
        self.published.append(Published(topic, payload, retain))
        if retain and payload:
            self.retained[topic] = payload
        elif retain:
            self.retained.pop(topic, None)
        await asyncio.sleep(0)  # the broker's round trip: other tasks run meanwhile
        if self._subscribed(topic):
            self.deliver(topic, payload)

    def under(self, prefix: str) -> list[Published]:
        return [p for p in self.published if p.topic.startswith(prefix)]
