"""MQTT <-> hub for Home Assistant: the Roost hub's entities and states out, commands in.

Every entity is available while the hub's status topic (the MQTT will) says ``online``.
Each entity has its own retained discovery config, published when the entity is new and
once per MQTT session (:mod:`hub.homeassistant.discovery`, which also caps the number of
entities and migrates the single device config of earlier versions). States wait in a
bounded outbox (the latest per topic) while the broker is away.

Commands arrive on ``roost/<hub_id>/ha/cmd/<key>``; each is validated (unknown key,
oversized, malformed: counted in ``roost_hub_ha_commands_total{kind,outcome}``, logged at
most once a minute per outcome, and ignored). Settings (learning mode, thresholds, the
routine choice) persist in ``<data_dir>/ha_settings.json`` and are published retained. On
Home Assistant's birth message (``homeassistant/status`` = ``online``) the settings and,
after HA had time to subscribe, the latest decision of each entity are sent again (same
``decision_id``: consumers that count decisions dedupe by it); the discovery configs are
retained, so the broker hands them to HA itself.

What a command asks of a service (feedback, training, rollback, install) and the
entities' polled states are the coordinator's (:mod:`hub.homeassistant.coordinator`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiomqtt

from hub.homeassistant import entities, fleet_entities
from hub.homeassistant.client import HaClient
from hub.homeassistant.coordinator import Coordinator
from hub.homeassistant.correction import Latest, confirmation, corrected
from hub.homeassistant.discovery import Discovery, Step
from hub.homeassistant.entities import BINARY_OPPOSITE, MODEL_PROBLEMS, ModelInfo
from hub.homeassistant.fleet_entities import FleetStatus
from hub.homeassistant.metrics import COMMANDS, FEEDBACK, HA_BUFFER_DROPS, HA_ENTITIES_REFUSED
from hub.homeassistant.notices import Notices
from hub.homeassistant.rooms import Rooms
from hub.homeassistant.settings import LEARNING_MODES, NUMBERS, Settings, parse_number
from hub.homeassistant.topics import (
    HA_STATUS_TOPIC,
    command_filter,
    command_key,
    command_topic,
    device_id,
    state_topic,
)
from hub.pipeline import Recorded
from hub.policy import ActionPolicy
from hub.topics import status_topic
from roost.inference.v1 import inference_service_pb2_grpc as inf_grpc
from roost.personalization.v1 import personalization_service_pb2_grpc as pers_grpc
from roost.update.v1 import update_service_pb2_grpc as upd_grpc
from services.kit.ratelog import RateLimitedLog

log = logging.getLogger(__name__)

MAX_COMMAND_BYTES = 64
# The part of an unknown command's key that is logged.
MAX_LOGGED_KEY = 64

Handler = Callable[[str], Awaitable[None]]


class HaBridge:
    """The Roost hub device in Home Assistant; runs inside the hub process."""

    def __init__(
        self,
        *,
        hub_id: str,
        prefix: str,
        models: Sequence[ModelInfo],
        settings: Settings,
        settings_path: Path,
        policy: ActionPolicy,
        inference: inf_grpc.InferenceServiceAsyncStub,
        personalization: pers_grpc.PersonalizationServiceAsyncStub | None = None,
        update: upd_grpc.UpdateServiceAsyncStub | None = None,
        fleet: FleetStatus | None = None,
        poll_seconds: float = 30.0,
        update_check_seconds: float = 3600.0,
        drift_retrain_seconds: float = 0.0,
        drift_retrain_epsilon: float = 1.0,
        drift_min_samples: int = 500,
        settle_seconds: float = 1.0,
        buffer_topics: int = 1000,
        max_entities: int = 1000,
        ha_client: HaClient | None = None,
        rooms: Rooms | None = None,
    ) -> None:
        self.hub_id = hub_id
        self.prefix = prefix
        self.models = {m.name: m for m in models}
        self.settings = settings
        self.settings_path = settings_path
        self.policy = policy
        policy.occupancy_threshold = settings.occupancy_threshold
        self.coordinator = Coordinator(
            hub_id=hub_id,
            models=models,
            settings=settings,
            inference=inference,
            personalization=personalization,
            update=update,
            fleet=fleet or FleetStatus(enabled=False, audit=None),
            push=self._queue,
            spawn=self._later,
            poll_seconds=poll_seconds,
            update_check_seconds=update_check_seconds,
            drift_retrain_seconds=drift_retrain_seconds,
            drift_retrain_epsilon=drift_retrain_epsilon,
            drift_min_samples=drift_min_samples,
        )
        self.settle_seconds = settle_seconds
        # Failed commands as HA notifications, corrections in HA's logbook.
        self.notices = Notices(ha_client, hub_id)
        # Each area's entities on the area's device; predictions expire (rooms).
        self.rooms = rooms or Rooms(hub_id)
        self.discovery = Discovery(prefix, hub_id, max_entities)
        self.components: dict[str, dict[str, Any]] = self.discovery.components
        # command key -> (kind, handler of the validated payload text)
        self.handlers: dict[str, tuple[str, Handler]] = {}
        self.latest: dict[tuple[str, str], Latest] = {}
        self.client: aiomqtt.Client | None = None
        self._outbox: dict[str, tuple[bytes, bool]] = {}
        self._buffer_topics = buffer_topics
        self._flush = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._availability = [{"topic": status_topic(hub_id)}]
        # Floods of bad commands, or of areas past the entity cap: a line a minute per reason.
        self._limited = RateLimitedLog(log)
        self._add_static_components()

    # ------------------------------------------------------------ components

    def _add(self, key: str, component: dict[str, Any]) -> None:
        component.setdefault("unique_id", f"{device_id(self.hub_id)}_{key}")
        component.setdefault("availability", self._availability)
        self.discovery.add(key, component)

    def _command(self, key: str, kind: str, component: dict[str, Any], handler: Handler) -> None:
        component["command_topic"] = command_topic(self.hub_id, key)
        self._add(key, component)
        self.handlers[key] = (kind, handler)

    def _add_static_components(self) -> None:
        h = self.hub_id
        c = self.coordinator
        self._add("privacy_budget", entities.privacy_budget_component(h))
        for key, component in fleet_entities.components(h):
            self._add(key, component)
        # Decision health: keys no area can take (a prediction's is "<model>_<area>").
        self._add("decisions", entities.decisions_problem_component(h))
        self._command(
            "learning_mode",
            "select",
            entities.learning_mode_component(h),
            self._set_learning_mode,
        )
        for key, (_, lo, hi, _) in NUMBERS.items():
            self._command(
                key, "number", entities.number_component(h, key), self._number_handler(key, lo, hi)
            )
        for model in sorted(self.models):
            self._add(f"decisions_{model}", entities.model_decisions_component(h, model))
            for what, name in MODEL_PROBLEMS:
                self._add(f"{model}_{what}", entities.model_problem_component(h, model, what, name))
            self._command(
                f"{model}_update",
                "update",
                entities.model_update_component(h, model),
                self._install_handler(model),
            )
            self._command(
                f"{model}_rollback",
                "button",
                entities.button_component(f"Roll back {model}"),
                self._press(
                    functools.partial(c.rollback, model),
                    f"Rolling back {model}",
                    f"{model}_rollback",
                ),
            )
            self._command(
                f"{model}_train",
                "button",
                entities.button_component(f"Learn now {model}"),
                self._press(
                    functools.partial(c.train, model), f"Learn now ({model})", f"{model}_train"
                ),
            )

    def _add_prediction(self, model: str, area: str) -> bool:
        """The entities of a new (model, area); False if they would pass the cap."""
        info = self.models.get(model, ModelInfo(model, ()))
        kind = entities.feedback_kind(model, info.labels)
        # The prediction, a "was wrong" button, and a "what was it?" select for choices.
        if not self.discovery.fits(1 + {None: 0, "binary": 1, "choice": 2}[kind]):
            return False
        key, place = f"{model}_{area}", functools.partial(self.rooms.place, area)
        prediction = entities.prediction_component(self.hub_id, model, area, info.labels)
        self._add(key, self.rooms.prediction(area, prediction))
        if kind is None:
            return True
        if kind == "choice":
            self._command(
                f"{key}_label",
                "select",
                place(entities.label_select_component(self.hub_id, model, area, info.labels)),
                self._choice_handler(key, info.labels),
            )
        self._command(
            f"{key}_wrong",
            "button",
            place(entities.wrong_button_component(model, area)),
            self._press(
                lambda: self._feedback(model, area),
                f"'That was wrong' ({model}, {area.replace('_', ' ')})",
                f"{key}_wrong",
            ),
        )
        return True

    # ------------------------------------------------------------ publishing

    def _queue(self, topic: str, payload: bytes, retain: bool) -> None:
        """Latest message per topic until the broker takes it (bounded)."""
        if topic not in self._outbox and len(self._outbox) >= self._buffer_topics:
            HA_BUFFER_DROPS.inc()
            return
        self._outbox[topic] = (payload, retain)
        self._flush.set()

    def _publish_settings(self) -> None:
        s = self.settings
        self._queue(state_topic(self.hub_id, "learning_mode"), s.learning_mode.encode(), True)
        for key in NUMBERS:
            self._queue(state_topic(self.hub_id, key), str(getattr(s, key)).encode(), True)
        for key, choice in s.choices.items():
            if f"{key}_label" in self.components:
                self._queue(state_topic(self.hub_id, f"{key}_label"), choice.encode(), True)

    async def on_connect(self, client: aiomqtt.Client) -> None:
        """A (re)connected session: subscribe, republish everything retained (the
        discovery configs once the sync marker is back: see ``discovery``)."""
        self.client = client
        await client.subscribe(command_filter(self.hub_id), qos=1)
        await client.subscribe(HA_STATUS_TOPIC, qos=1)
        await self.discovery.start_session(client)
        self._publish_settings()
        self._later(self._republish_latest())

    def on_disconnect(self) -> None:
        self.client = None

    async def _flusher(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self._flush.wait()
            self._flush.clear()
            client = self.client
            if client is None:
                continue  # flushed on the next connect (on_connect sets the event)
            try:
                await self._send(client)
            except aiomqtt.MqttError:
                continue  # kept; retried after the reconnect

    async def _send(self, client: aiomqtt.Client) -> None:
        """The due discovery configs (new entities first appear), then the outbox."""
        await self.discovery.publish_due(client, lambda: self.client is client)
        while self._outbox and self.client is client:
            topic, (payload, retain) = next(iter(self._outbox.items()))
            await client.publish(topic, payload, qos=1, retain=retain)
            if self._outbox.get(topic) == (payload, retain):
                del self._outbox[topic]

    async def _migrate(self, client: aiomqtt.Client) -> None:
        if await self.discovery.migrate(client, self.settle_seconds):
            self._flush.set()
            self._later(self._republish_latest())

    async def _republish_latest(self, keys: Sequence[tuple[str, str]] | None = None) -> None:
        """After discovery settled: the latest decision of each entity (of ``keys``, new
        entities, or of every entity when HA was away), sent again with the same decision
        id; twice, since a loaded Home Assistant may subscribe to a new entity later. The
        latest when sent: the decisions published meanwhile may have come too early."""
        keys = list(self.latest) if keys is None else list(keys)
        if not keys:
            return
        for wait in (self.settle_seconds, 4 * self.settle_seconds):
            await asyncio.sleep(wait)
            for key in keys:
                if (latest := self.latest.get(key)) is not None:
                    self._queue(latest.topic, latest.payload, False)

    def _later(self, coro: Awaitable[None]) -> None:
        async def wrapped() -> None:
            try:
                await coro
            except Exception:
                log.exception("Home Assistant task failed")

        task = asyncio.create_task(wrapped())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def idle(self) -> None:
        """Wait until the background tasks (commands, republishing) have finished,
        including those they started."""
        while self._tasks:
            await asyncio.gather(*self._tasks)

    # ------------------------------------------------------------ running

    async def run(self, stop: asyncio.Event) -> None:
        """Flush the outbox and poll the services until ``stop``."""
        flusher = asyncio.create_task(self._flusher(stop))
        try:
            await self.coordinator.run(stop)
        finally:
            flusher.cancel()
            for task in list(self._tasks):
                task.cancel()

    # ------------------------------------------------------------ decisions

    async def on_recorded(self, items: Sequence[Recorded]) -> None:
        """Called by the pipeline after the audit log acknowledged ``items``."""
        new: list[tuple[str, str]] = []
        for r in items:
            if r.late:
                continue  # the entity already shows a newer decision
            key = (r.model, r.area)
            if f"{r.model}_{r.area}" not in self.components:
                if not self._add_prediction(r.model, r.area):
                    self._refused()
                    continue
                new.append(key)
            self.latest[key] = Latest(r.decision_id, r.label, r.topic, r.payload)
        if new:
            self._flush.set()
            if self.client is not None:
                # HA creates the entity and subscribes a moment after the config: the
                # pipeline goes on (never held back), and the new entities' latest
                # decisions are sent again once HA had time to subscribe.
                self._later(self._republish_latest(new))

    def _refused(self) -> None:
        HA_ENTITIES_REFUSED.inc()
        self._limited(
            "entity_cap",
            "the Roost hub has %d Home Assistant entities (ha_max_entities): new areas get "
            "no entity (they are still decided); see roost_hub_ha_entities_refused_total",
            len(self.components),
        )

    # ------------------------------------------------------------ commands

    def handle(self, topic: str, payload: bytes) -> bool:
        """Route a message if it is Home Assistant's; False if it is not."""
        if topic == HA_STATUS_TOPIC:
            if payload.strip() == b"online":
                log.info("Home Assistant (re)started: sending the Roost hub's states again")
                self._publish_settings()
                self._later(self._republish_latest())
            return True
        if topic in (self.discovery.legacy_topic, self.discovery.sync_topic):
            self._discovery_step(self.discovery.on_message(topic, payload))
            return True
        key = command_key(self.hub_id, topic)
        if key is None:
            return False
        self._command_message(key, payload)
        return True

    def _command_message(self, key: str, payload: bytes) -> None:
        entry = self.handlers.get(key)
        if entry is None:
            self._reject("unknown", "unknown", key[:MAX_LOGGED_KEY])
            return
        kind, handler = entry
        if len(payload) > MAX_COMMAND_BYTES:
            self._reject(kind, "oversized", key)
            return
        try:
            text = payload.decode("utf-8").strip()
        except UnicodeDecodeError:
            self._reject(kind, "malformed", key)
            return
        self._later(handler(text))

    def _discovery_step(self, step: Step | None) -> None:
        client = self.client
        if step is Step.ANNOUNCE:
            self._flush.set()
        elif step is Step.MIGRATE and client is not None:
            self._later(self._migrate(client))

    def _reject(self, kind: str, outcome: str, key: str) -> None:
        """A command ignored: counted, and logged at most once a minute per outcome (the
        entity's key, never the payload)."""
        COMMANDS.labels(kind, outcome).inc()
        self._limited(outcome, "ignoring %s Home Assistant commands (e.g. for %r)", outcome, key)

    def _press(self, action: Callable[[], Awaitable[str | None]], what: str, key: str) -> Handler:
        """A button's handler: ``action`` returns why it failed (a notification)."""

        async def handler(text: str) -> None:
            if text != "PRESS":
                COMMANDS.labels("button", "malformed").inc()
                return
            COMMANDS.labels("button", "accepted").inc()
            await self.notices.report(key, what, await action())

        return handler

    async def _set_learning_mode(self, text: str) -> None:
        if text not in LEARNING_MODES:
            COMMANDS.labels("select", "malformed").inc()
            return
        COMMANDS.labels("select", "accepted").inc()
        self.settings.learning_mode = text
        self.settings.save(self.settings_path)
        log.info("learning mode set to %s from Home Assistant", text)
        self._publish_settings()
        await self.coordinator.learning.sync()  # binding where rounds are computed
        await self.coordinator.push_fleet()

    def _number_handler(self, key: str, lo: float, hi: float) -> Handler:
        async def handler(text: str) -> None:
            value = parse_number(text, lo, hi)
            if value is None:
                COMMANDS.labels("number", "malformed").inc()
                return
            COMMANDS.labels("number", "accepted").inc()
            setattr(self.settings, key, value)
            if key == "occupancy_threshold":
                self.policy.occupancy_threshold = value
            self.settings.save(self.settings_path)
            self._publish_settings()

        return handler

    def _choice_handler(self, key: str, labels: Sequence[str]) -> Handler:
        async def handler(text: str) -> None:
            if text not in labels:
                COMMANDS.labels("select", "malformed").inc()
                return
            COMMANDS.labels("select", "accepted").inc()
            self.settings.choices[key] = text
            self.settings.save(self.settings_path)
            self._publish_settings()

        return handler

    def _install_handler(self, model: str) -> Handler:
        async def handler(text: str) -> None:
            if text != "install":
                COMMANDS.labels("update", "malformed").inc()
                return
            COMMANDS.labels("update", "accepted").inc()
            why = await self.coordinator.install(model)
            await self.notices.report(f"{model}_update", f"Installing the {model} update", why)

        return handler

    async def _feedback(self, model: str, area: str) -> str | None:
        """A "was wrong" press: the opposite label (binary models) or the chosen one, for
        the latest decision of the entity; once recorded, the entity shows it corrected."""
        latest = self.latest.get((model, area))
        if latest is None:
            FEEDBACK.labels("no_decision").inc()
            return "there is no decision to correct yet"
        if model in BINARY_OPPOSITE:
            label = BINARY_OPPOSITE[model].get(latest.label)
        else:
            label = self.settings.choices.get(f"{model}_{area}")
        if label is None:
            FEEDBACK.labels("no_label").inc()
            log.warning("'was wrong' for %s needs a choice in 'what was it?' first", model)
            return "pick the right one in 'what was it?' first"
        why = await self.coordinator.record_label(latest.decision_id, label)
        if why is None and self.latest.get((model, area)) is latest:
            shown = corrected(latest, label)
            self.latest[(model, area)] = shown
            self._queue(shown.topic, shown.payload, False)
            await self.notices.logbook(confirmation(model, area, latest.label, label))
        return why
