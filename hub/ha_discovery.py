"""Roost in Home Assistant: one MQTT-discovered device, "Roost hub", and its entities.

Device-based discovery (``<prefix>/device/roost_<hub_id>/config`` with ``cmps``,
retained). Every entity is available while the hub's status topic (the MQTT will) says
``online``. Components (``docs/home-assistant.md`` lists them):

* per (model, area) the hub decided on, added with its first decision: the prediction
  (``binary_sensor``/``sensor``) whose state and attributes are templates over the
  decision topic ``roost/<hub_id>/decisions/<model>/<area>``; a "was wrong" ``button``
  for classification models (the routine model adds a "what was it?" ``select``);
* per model: drift and health ``binary_sensor`` (device_class problem), an ``update``
  entity, "roll back" and "learn now" buttons;
* the privacy budget ``sensor`` (unavailable without the personalization service), the
  learning mode ``select`` and the threshold ``number`` entities.

Commands arrive on ``roost/<hub_id>/ha/cmd/<key>``; each is validated (unknown key,
oversized, malformed: counted in ``roost_hub_ha_commands_total{kind,outcome}`` and
ignored). Settings (learning mode, thresholds, the routine choice) persist in
``<data_dir>/ha_settings.json`` and are published retained. On Home Assistant's birth
message (``homeassistant/status`` = ``online``) the device config is republished and,
after HA had time to subscribe, the latest decision of each entity too (same
``decision_id``: consumers that count decisions dedupe by it).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import grpc
from prometheus_client import Counter, Gauge

from hub.decisions import ActionPolicy, Recorded
from hub.topics import status_topic
from roost.inference.v1 import inference_service_pb2 as inf_pb
from roost.inference.v1 import inference_service_pb2_grpc as inf_grpc
from roost.personalization.v1 import personalization_service_pb2 as pers_pb
from roost.personalization.v1 import personalization_service_pb2_grpc as pers_grpc
from roost.update.v1 import update_service_pb2 as upd_pb
from roost.update.v1 import update_service_pb2_grpc as upd_grpc

log = logging.getLogger(__name__)

COMMANDS = Counter(
    "roost_hub_ha_commands_total",
    "Commands from Home Assistant by entity kind and outcome "
    "(accepted, unknown, oversized, malformed, refused, failed).",
    ["kind", "outcome"],
)
FEEDBACK = Counter("roost_hub_feedback_total", "'That was wrong' labels by outcome.", ["outcome"])
DRIFT_RETRAINS = Counter(
    "roost_hub_drift_retrains_total",
    "Personalization runs started because a model drifted.",
    ["model"],
)
# The models personalization can fine-tune.
PERSONALIZABLE = frozenset({"occupancy", "routine"})
HA_BUFFER_DROPS = Counter(
    "roost_hub_ha_buffer_dropped_total",
    "Home Assistant state messages dropped because the buffer was full (broker away).",
)
HA_ENTITIES = Gauge("roost_hub_ha_components", "Components in the Roost hub device.")

LEARNING_MODES = ("learning", "paused", "local-only")
MAX_COMMAND_BYTES = 64
HA_STATUS_TOPIC = "homeassistant/status"
ROOST_VERSION = "0.1.0"
BINARY_OPPOSITE = {"occupancy": {"occupied": "vacant", "vacant": "occupied"}}
ROLLOUT_RUNNING = (
    upd_pb.ROLLOUT_STAGE_STAGED,
    upd_pb.ROLLOUT_STAGE_SHADOW,
    upd_pb.ROLLOUT_STAGE_AB,
)
# A candidate is unhealthy when its error rate exceeds the active's by this much.
CANDIDATE_ERROR_MARGIN = 0.05
_NUMBER = re.compile(r"^-?[0-9]{1,6}(\.[0-9]{1,6})?$")


def device_id(hub_id: str) -> str:
    return "roost_" + re.sub(r"[^A-Za-z0-9_-]", "_", hub_id)


def discovery_topic(prefix: str, hub_id: str) -> str:
    return f"{prefix}/device/{device_id(hub_id)}/config"


def ha_base(hub_id: str) -> str:
    return f"roost/{hub_id}/ha"


def command_topic(hub_id: str, key: str) -> str:
    return f"{ha_base(hub_id)}/cmd/{key}"


def command_filter(hub_id: str) -> str:
    return f"{ha_base(hub_id)}/cmd/+"


def state_topic(hub_id: str, key: str) -> str:
    return f"{ha_base(hub_id)}/state/{key}"


def personalization_availability(hub_id: str) -> str:
    return f"{ha_base(hub_id)}/personalization/availability"


def title(text: str) -> str:
    return text.replace("_", " ").capitalize()


# ---------------------------------------------------------------- settings


@dataclass
class Settings:
    """What the homeowner sets from Home Assistant; persisted across restarts."""

    learning_mode: str = "learning"
    occupancy_threshold: float = 0.5
    drift_psi_alert: float = 0.25
    choices: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path, defaults: Settings) -> Settings:
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            return defaults
        s = Settings(**asdict(defaults))
        if doc.get("learning_mode") in LEARNING_MODES:
            s.learning_mode = doc["learning_mode"]
        for name in ("occupancy_threshold", "drift_psi_alert"):
            if isinstance(doc.get(name), int | float):
                setattr(s, name, float(doc[name]))
        if isinstance(doc.get("choices"), dict):
            s.choices = {str(k): str(v) for k, v in doc["choices"].items()}
        return s

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.replace(path)


# ---------------------------------------------------------------- components

# (min, max, step) of the number entities.
NUMBERS: dict[str, tuple[str, float, float, float]] = {
    "occupancy_threshold": ("Occupancy threshold", 0.05, 0.95, 0.05),
    "drift_psi_alert": ("Drift alert level (PSI)", 0.05, 2.0, 0.05),
}

_ATTRIBUTES_TEMPLATE = (
    "{{ {'confidence': value_json.confidence, 'model_version': value_json.model.version, "
    "'why': value_json.why, 'decision_id': value_json.decision_id, "
    "'audit_index': value_json.audit_index, 'label': value_json.label, "
    "'action': value_json.action, 'decided_at': value_json.decided_at} | tojson }}"
)


def prediction_component(
    hub_id: str, model: str, area: str, labels: Sequence[str]
) -> dict[str, Any]:
    """The entity of one (model, area), its state and attributes from the decision topic."""
    topic = f"roost/{hub_id}/decisions/{model}/{area}"
    base: dict[str, Any] = {
        "name": f"{title(model)} {area.replace('_', ' ')}",
        "unique_id": f"{device_id(hub_id)}_{model}_{area}",
        "state_topic": topic,
        "json_attributes_topic": topic,
        "json_attributes_template": _ATTRIBUTES_TEMPLATE,
    }
    if model == "occupancy":
        return {
            **base,
            "p": "binary_sensor",
            "device_class": "occupancy",
            "value_template": "{{ 'ON' if value_json.label == 'occupied' else 'OFF' }}",
        }
    if model == "anomaly":
        # Regression outputs; values[1] is the anomaly score (0..1).
        return {
            **base,
            "p": "binary_sensor",
            "device_class": "problem",
            "value_template": "{{ 'ON' if value_json['values'][1] >= 0.5 else 'OFF' }}",
        }
    if model == "comfort":
        return {
            **base,
            "p": "sensor",
            "device_class": "temperature",
            "unit_of_measurement": "°C",
            "state_class": "measurement",
            "name": f"Temperature forecast {area.replace('_', ' ')}",
            "value_template": "{{ value_json['values'][0] | round(1) }}",
        }
    component = {**base, "p": "sensor", "value_template": "{{ value_json.label }}"}
    if labels:
        component |= {"device_class": "enum", "options": list(labels)}
    return component


def feedback_kind(model: str, labels: Sequence[str]) -> str | None:
    """ "binary" (the opposite label), "choice" (a select names it) or None (no feedback:
    regression models have no label to correct)."""
    if model in BINARY_OPPOSITE:
        return "binary"
    if model in ("comfort", "anomaly") or not labels:
        return None
    return "choice"


@dataclass
class Latest:
    decision_id: str
    label: str
    topic: str
    payload: bytes


@dataclass(frozen=True)
class ModelInfo:
    name: str
    labels: tuple[str, ...]
    version: str = ""


Publish = Callable[[str, bytes, bool], Awaitable[None]]


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
        poll_seconds: float = 30.0,
        update_check_seconds: float = 3600.0,
        drift_retrain_seconds: float = 0.0,
        drift_retrain_epsilon: float = 1.0,
        drift_min_samples: int = 500,
        settle_seconds: float = 1.0,
        buffer_topics: int = 1000,
    ) -> None:
        self.hub_id = hub_id
        self.prefix = prefix
        self.models = {m.name: m for m in models}
        self.settings = settings
        self.settings_path = settings_path
        self.policy = policy
        policy.occupancy_threshold = settings.occupancy_threshold
        self.inference = inference
        self.personalization = personalization
        self.update = update
        self.poll_seconds = poll_seconds
        self.update_check_seconds = update_check_seconds
        # Drift-triggered personalization: at most once per this many seconds per model.
        self.drift_retrain_seconds = drift_retrain_seconds
        self.drift_retrain_epsilon = drift_retrain_epsilon
        self.drift_min_samples = drift_min_samples
        self._drift_trained: dict[str, float] = {}
        self.settle_seconds = settle_seconds
        self.components: dict[str, dict[str, Any]] = {}
        # command key -> (kind, handler of the validated payload text)
        self.handlers: dict[str, tuple[str, Callable[[str], Awaitable[None]]]] = {}
        self.latest: dict[tuple[str, str], Latest] = {}
        self.client: aiomqtt.Client | None = None
        self._outbox: dict[str, tuple[bytes, bool]] = {}
        self._buffer_topics = buffer_topics
        self._flush = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._latest_updates: dict[str, tuple[str, str]] = {}
        self._update_checked = -1e9
        self._availability = [{"topic": status_topic(hub_id)}]
        self._add_static_components()

    # ------------------------------------------------------------ components

    def _add(self, key: str, component: dict[str, Any]) -> None:
        component.setdefault("unique_id", f"{device_id(self.hub_id)}_{key}")
        component.setdefault("availability", self._availability)
        self.components[key] = component
        HA_ENTITIES.set(len(self.components))

    def _command(
        self,
        key: str,
        kind: str,
        component: dict[str, Any],
        handler: Callable[[str], Awaitable[None]],
    ) -> None:
        component["command_topic"] = command_topic(self.hub_id, key)
        self._add(key, component)
        self.handlers[key] = (kind, handler)

    def _add_static_components(self) -> None:
        h = self.hub_id
        self._add(
            "privacy_budget",
            {
                "p": "sensor",
                "name": "Privacy budget spent",
                "icon": "mdi:shield-lock",
                "unit_of_measurement": "ε",
                "state_class": "measurement",
                "state_topic": state_topic(h, "privacy_budget"),
                "value_template": "{{ value_json.epsilon_spent }}",
                "json_attributes_topic": state_topic(h, "privacy_budget"),
                "availability": [
                    {"topic": status_topic(h)},
                    {"topic": personalization_availability(h)},
                ],
                "availability_mode": "all",
            },
        )
        self._command(
            "learning_mode",
            "select",
            {
                "p": "select",
                "name": "Learning mode",
                "icon": "mdi:school",
                "options": list(LEARNING_MODES),
                "state_topic": state_topic(h, "learning_mode"),
                "entity_category": "config",
            },
            self._set_learning_mode,
        )
        for key, (name, lo, hi, step) in NUMBERS.items():
            self._command(
                key,
                "number",
                {
                    "p": "number",
                    "name": name,
                    "min": lo,
                    "max": hi,
                    "step": step,
                    "mode": "box",
                    "state_topic": state_topic(h, key),
                    "entity_category": "config",
                },
                self._number_handler(key, lo, hi),
            )
        for model in sorted(self.models):
            status = state_topic(h, f"{model}_status")
            for what, name in (("drift", "drift"), ("health", "model health")):
                self._add(
                    f"{model}_{what}",
                    {
                        "p": "binary_sensor",
                        "name": f"{title(model)} {name}",
                        "device_class": "problem",
                        "entity_category": "diagnostic",
                        "state_topic": status,
                        "value_template": f"{{{{ value_json.{what} }}}}",
                        "json_attributes_topic": status,
                        "json_attributes_template": "{{ value_json.details | tojson }}",
                    },
                )
            self._command(
                f"{model}_update",
                "update",
                {
                    "p": "update",
                    "name": f"{title(model)} model",
                    "state_topic": state_topic(h, f"{model}_update"),
                    "payload_install": "install",
                },
                self._install_handler(model),
            )
            self._command(
                f"{model}_rollback",
                "button",
                {"p": "button", "name": f"Roll back {model}", "payload_press": "PRESS"},
                self._press(functools.partial(self._rollback, model)),
            )
            self._command(
                f"{model}_train",
                "button",
                {"p": "button", "name": f"Learn now {model}", "payload_press": "PRESS"},
                self._press(functools.partial(self._train, model)),
            )

    def _add_prediction(self, model: str, area: str) -> None:
        info = self.models.get(model, ModelInfo(model, ()))
        key = f"{model}_{area}"
        self._add(key, prediction_component(self.hub_id, model, area, info.labels))
        kind = feedback_kind(model, info.labels)
        if kind is None:
            return
        if kind == "choice":
            self._command(
                f"{key}_label",
                "select",
                {
                    "p": "select",
                    "name": f"{title(model)} {area.replace('_', ' ')}: what was it?",
                    "options": list(info.labels),
                    "state_topic": state_topic(self.hub_id, f"{key}_label"),
                },
                self._choice_handler(key, info.labels),
            )
        self._command(
            f"{key}_wrong",
            "button",
            {
                "p": "button",
                "name": f"{title(model)} {area.replace('_', ' ')} was wrong",
                "icon": "mdi:thumb-down",
                "payload_press": "PRESS",
            },
            self._press(lambda: self._feedback(model, area)),
        )

    def discovery_config(self) -> dict[str, Any]:
        return {
            "dev": {
                "ids": [device_id(self.hub_id)],
                "name": "Roost hub",
                "mf": "Roost",
                "mdl": "Roost privacy-preserving AI hub",
                "sw": ROOST_VERSION,
            },
            "o": {"name": "roost", "sw": ROOST_VERSION},
            "cmps": self.components,
            "qos": 1,
        }

    # ------------------------------------------------------------ publishing

    def _queue(self, topic: str, payload: bytes, retain: bool) -> None:
        """Latest message per topic until the broker takes it (bounded)."""
        if topic not in self._outbox and len(self._outbox) >= self._buffer_topics:
            HA_BUFFER_DROPS.inc()
            return
        self._outbox[topic] = (payload, retain)
        self._flush.set()

    def _publish_discovery(self) -> None:
        self._queue(
            discovery_topic(self.prefix, self.hub_id),
            json.dumps(self.discovery_config(), separators=(",", ":")).encode(),
            True,
        )

    def _publish_settings(self) -> None:
        s = self.settings
        self._queue(state_topic(self.hub_id, "learning_mode"), s.learning_mode.encode(), True)
        for key in NUMBERS:
            self._queue(state_topic(self.hub_id, key), str(getattr(s, key)).encode(), True)
        for key, choice in s.choices.items():
            if f"{key}_label" in self.components:
                self._queue(state_topic(self.hub_id, f"{key}_label"), choice.encode(), True)

    async def on_connect(self, client: aiomqtt.Client) -> None:
        """A (re)connected session: subscribe, republish everything retained."""
        self.client = client
        await client.subscribe(command_filter(self.hub_id), qos=1)
        await client.subscribe(HA_STATUS_TOPIC, qos=1)
        self._publish_discovery()
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
            while self._outbox and self.client is client:
                topic, (payload, retain) = next(iter(self._outbox.items()))
                try:
                    await client.publish(topic, payload, qos=1, retain=retain)
                except aiomqtt.MqttError:
                    break  # kept; retried after the reconnect
                if self._outbox.get(topic) == (payload, retain):
                    del self._outbox[topic]

    async def _republish_latest(self, keys: Sequence[tuple[str, str]] | None = None) -> None:
        """After discovery settled: the latest decision per entity known now (of ``keys``,
        or of every entity when HA was away), sent again with the same decision id.

        Only decisions made before this call: newer ones are published by the pipeline."""
        known = [latest for key, latest in self.latest.items() if keys is None or key in keys]
        if not known:
            return
        await asyncio.sleep(self.settle_seconds)
        for latest in known:
            if self.latest.get(_key(latest.topic)) is latest:
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

    # ------------------------------------------------------------ decisions

    async def on_recorded(self, items: Sequence[Recorded]) -> None:
        """Called by the pipeline after the audit log acknowledged ``items``."""
        new: list[tuple[str, str]] = []
        for r in items:
            key = (r.model, r.area)
            if f"{r.model}_{r.area}" not in self.components:
                self._add_prediction(r.model, r.area)
                new.append(key)
            self.latest[key] = Latest(r.decision_id, r.label, r.topic, r.payload)
        if new:
            self._publish_discovery()
            if self.client is not None:
                # HA creates the entity and subscribes a moment after the config: the
                # pipeline goes on (never held back), and the new entities' latest
                # decisions are sent again once HA had time to subscribe.
                self._later(self._republish_latest(new))

    # ------------------------------------------------------------ commands

    def handle(self, topic: str, payload: bytes) -> bool:
        """Route a message if it is Home Assistant's; False if it is not."""
        if topic == HA_STATUS_TOPIC:
            if payload.strip() == b"online":
                log.info("Home Assistant (re)started: republishing the Roost device")
                self._publish_discovery()
                self._publish_settings()
                self._later(self._republish_latest())
            return True
        prefix = ha_base(self.hub_id) + "/cmd/"
        if not topic.startswith(prefix):
            return False
        key = topic[len(prefix) :]
        entry = self.handlers.get(key)
        if entry is None:
            COMMANDS.labels("unknown", "unknown").inc()
            log.warning("ignoring a command for an unknown Roost entity")
            return True
        kind, handler = entry
        if len(payload) > MAX_COMMAND_BYTES:
            COMMANDS.labels(kind, "oversized").inc()
            return True
        try:
            text = payload.decode("utf-8").strip()
        except UnicodeDecodeError:
            COMMANDS.labels(kind, "malformed").inc()
            return True
        self._later(handler(text))
        return True

    def _press(self, action: Callable[[], Awaitable[None]]) -> Callable[[str], Awaitable[None]]:
        async def handler(text: str) -> None:
            if text != "PRESS":
                COMMANDS.labels("button", "malformed").inc()
                return
            COMMANDS.labels("button", "accepted").inc()
            await action()

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

    def _number_handler(self, key: str, lo: float, hi: float) -> Callable[[str], Awaitable[None]]:
        async def handler(text: str) -> None:
            if not _NUMBER.match(text) or not lo <= float(text) <= hi:
                COMMANDS.labels("number", "malformed").inc()
                return
            COMMANDS.labels("number", "accepted").inc()
            setattr(self.settings, key, float(text))
            if key == "occupancy_threshold":
                self.policy.occupancy_threshold = float(text)
            self.settings.save(self.settings_path)
            self._publish_settings()

        return handler

    def _choice_handler(self, key: str, labels: Sequence[str]) -> Callable[[str], Awaitable[None]]:
        async def handler(text: str) -> None:
            if text not in labels:
                COMMANDS.labels("select", "malformed").inc()
                return
            COMMANDS.labels("select", "accepted").inc()
            self.settings.choices[key] = text
            self.settings.save(self.settings_path)
            self._publish_settings()

        return handler

    def _install_handler(self, model: str) -> Callable[[str], Awaitable[None]]:
        async def handler(text: str) -> None:
            if text != "install":
                COMMANDS.labels("update", "malformed").inc()
                return
            COMMANDS.labels("update", "accepted").inc()
            await self._install(model)

        return handler

    async def _feedback(self, model: str, area: str) -> None:
        latest = self.latest.get((model, area))
        if latest is None:
            FEEDBACK.labels("no_decision").inc()
            return
        if model in BINARY_OPPOSITE:
            label = BINARY_OPPOSITE[model].get(latest.label)
        else:
            label = self.settings.choices.get(f"{model}_{area}")
        if label is None:
            FEEDBACK.labels("no_label").inc()
            log.warning("'was wrong' for %s needs a choice in 'what was it?' first", model)
            return
        if self.personalization is None:
            FEEDBACK.labels("unavailable").inc()
            log.warning("'was wrong' pressed but the personalization service is not deployed")
            return
        try:
            await self.personalization.RecordLabel(
                pers_pb.RecordLabelRequest(
                    decision_id=latest.decision_id,
                    label=label,
                    source=pers_pb.LABEL_SOURCE_FEEDBACK,
                ),
                timeout=5.0,
            )
        except grpc.aio.AioRpcError as e:
            FEEDBACK.labels("failed").inc()
            log.warning("RecordLabel failed: %s", e.code().name)
            return
        FEEDBACK.labels("recorded").inc()
        log.info("feedback recorded for decision %s", latest.decision_id)

    def training_allowed(self) -> bool:
        """Paused learning: the hub starts no training (and local-only: no fleet rounds)."""
        return self.settings.learning_mode != "paused"

    def _maybe_retrain(self, model: str) -> None:
        """Drift can trigger personalization: a DP fine-tuning run on the local examples
        (learning not paused, a personalizable model, at most once per cooldown)."""
        if not self.drift_retrain_seconds or model not in PERSONALIZABLE:
            return
        if not self.training_allowed() or self.personalization is None:
            return
        now = time.monotonic()
        last = self._drift_trained.get(model)
        if last is not None and now - last < self.drift_retrain_seconds:
            return
        self._drift_trained[model] = now
        DRIFT_RETRAINS.labels(model).inc()
        log.info("%s drifted: starting a personalization run", model)
        self._later(self._train(model, epsilon=self.drift_retrain_epsilon))

    async def _train(self, model: str, epsilon: float = 1.0) -> None:
        if not self.training_allowed():
            COMMANDS.labels("button", "refused").inc()
            log.info("learning is paused: not starting training for %s", model)
            return
        if self.personalization is None:
            COMMANDS.labels("button", "failed").inc()
            return
        try:
            await self.personalization.StartTraining(
                pers_pb.StartTrainingRequest(model_name=model, target_epsilon=epsilon),
                timeout=10.0,
            )
        except grpc.aio.AioRpcError as e:
            COMMANDS.labels("button", "failed").inc()
            log.warning("StartTraining(%s) failed: %s", model, e.code().name)

    async def _rollback(self, model: str) -> None:
        if self.update is None:
            COMMANDS.labels("button", "failed").inc()
            return
        try:
            await self.update.Rollback(
                upd_pb.RollbackRequest(model_name=model, reason="from Home Assistant"),
                timeout=10.0,
            )
        except grpc.aio.AioRpcError as e:
            COMMANDS.labels("button", "failed").inc()
            log.warning("Rollback(%s) failed: %s", model, e.code().name)
        await self._poll_update(model)

    async def _install(self, model: str) -> None:
        """Stage the newest version (unless a local candidate is staged) and start shadow."""
        if self.update is None:
            COMMANDS.labels("update", "failed").inc()
            return
        _, latest = self._latest_updates.get(model, ("", ""))
        try:
            if latest:
                await self.update.Stage(
                    upd_pb.StageRequest(model_name=model, version=latest), timeout=60.0
                )
            await self.update.StartRollout(
                upd_pb.StartRolloutRequest(model_name=model, stage=upd_pb.ROLLOUT_STAGE_SHADOW),
                timeout=10.0,
            )
        except grpc.aio.AioRpcError as e:
            COMMANDS.labels("update", "failed").inc()
            log.warning("installing %s failed: %s", model, e.code().name)
        await self._poll_update(model)

    # ------------------------------------------------------------ polling

    async def run(self, stop: asyncio.Event) -> None:
        flusher = asyncio.create_task(self._flusher(stop))
        try:
            while not stop.is_set():
                await self.poll_once()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.poll_seconds)
        finally:
            flusher.cancel()
            for task in list(self._tasks):
                task.cancel()

    async def poll_once(self) -> None:
        await self._poll_budget()
        loop = asyncio.get_running_loop()
        check = loop.time() - self._update_checked >= self.update_check_seconds
        if check:
            self._update_checked = loop.time()
            await self._check_updates()
        for model in sorted(self.models):
            await self._poll_model(model)
            await self._poll_update(model)

    async def _poll_budget(self) -> None:
        avail = personalization_availability(self.hub_id)
        if self.personalization is None:
            self._queue(avail, b"offline", True)
            return
        try:
            resp = await self.personalization.GetPrivacyBudget(
                pers_pb.GetPrivacyBudgetRequest(scope="household"), timeout=3.0
            )
        except grpc.aio.AioRpcError:
            self._queue(avail, b"offline", True)
            return
        b = resp.budget
        doc = {
            "epsilon_spent": round(b.epsilon_spent, 4),
            "epsilon_limit": round(b.epsilon_limit, 4),
            "epsilon_remaining": round(max(b.epsilon_limit - b.epsilon_spent, 0.0), 4),
            "delta": b.delta,
            "scope": b.scope or "household",
            "learning_mode": self.settings.learning_mode,
        }
        if b.HasField("period_end"):
            doc["period_end"] = b.period_end.ToJsonString()
        self._queue(state_topic(self.hub_id, "privacy_budget"), json.dumps(doc).encode(), True)
        self._queue(avail, b"online", True)

    async def _poll_model(self, model: str) -> None:
        try:
            s: inf_pb.GetModelStatusResponse = await self.inference.GetModelStatus(
                inf_pb.GetModelStatusRequest(model_name=model), timeout=3.0
            )
        except grpc.aio.AioRpcError as e:
            doc = {"drift": "OFF", "health": "ON", "details": {"reason": e.code().name}}
            self._queue(state_topic(self.hub_id, f"{model}_status"), json.dumps(doc).encode(), True)
            return
        psi_max = max((f.psi for f in s.drift), default=0.0)
        # The homeowner's PSI level applies only to features with enough live samples
        # (a handful of readings after a restart is not drift).
        over = [
            f
            for f in s.drift
            if f.psi >= self.settings.drift_psi_alert and f.samples >= self.drift_min_samples
        ]
        drift = s.drift_alert or (s.drift_monitored and bool(over))
        unhealthy, reason = False, "ok"
        if not s.active.loaded:
            unhealthy, reason = True, "active model not loaded"
        elif s.HasField("candidate") and s.candidate.model.version:
            if not s.candidate.loaded:
                unhealthy, reason = True, "rollout candidate not loaded"
            elif s.candidate.error_rate > s.active.error_rate + CANDIDATE_ERROR_MARGIN:
                unhealthy, reason = True, "rollout candidate fails more often than active"
        drifting = sorted(f.feature for f in s.drift if f.alert or f in over)
        doc = {
            "drift": "ON" if drift else "OFF",
            "health": "ON" if unhealthy else "OFF",
            "details": {
                "psi_max": round(psi_max, 4),
                "psi_alert_level": self.settings.drift_psi_alert,
                "drifting_features": drifting,
                "health": reason,
                "active_version": s.active.model.version,
                "candidate_version": s.candidate.model.version,
            },
        }
        self._queue(state_topic(self.hub_id, f"{model}_status"), json.dumps(doc).encode(), True)
        if drift:
            self._maybe_retrain(model)
        info = self.models.get(model)
        if info is not None and s.active.model.version:
            self.models[model] = ModelInfo(info.name, info.labels, s.active.model.version)

    async def _check_updates(self) -> None:
        if self.update is None:
            return
        try:
            resp = await self.update.CheckForUpdates(upd_pb.CheckForUpdatesRequest(), timeout=30.0)
        except grpc.aio.AioRpcError as e:
            log.info("CheckForUpdates: %s", e.code().name)
            return
        for u in resp.updates:
            _, current = self._latest_updates.get(u.model.name, ("", ""))
            if _version_key(u.model.version) > _version_key(current):
                self._latest_updates[u.model.name] = ("tuf", u.model.version)

    async def _poll_update(self, model: str) -> None:
        installed = self.models[model].version if model in self.models else ""
        candidate = ""
        in_progress = False
        if self.update is not None:
            try:
                versions = await self.update.ListVersions(
                    upd_pb.ListVersionsRequest(model_name=model), timeout=3.0
                )
                for v in versions.versions:
                    if v.slot == upd_pb.SLOT_ACTIVE:
                        installed = v.model.version
                    elif v.slot == upd_pb.SLOT_CANDIDATE:
                        candidate = v.model.version
                status = await self.update.GetRolloutStatus(
                    upd_pb.GetRolloutStatusRequest(model_name=model), timeout=3.0
                )
                in_progress = status.status.stage in ROLLOUT_RUNNING
            except grpc.aio.AioRpcError as e:
                log.debug("update status of %s: %s", model, e.code().name)
        _, latest = self._latest_updates.get(model, ("", ""))
        latest = latest or candidate or installed
        if not installed:
            return
        doc = {
            "installed_version": installed,
            "latest_version": latest,
            "in_progress": in_progress,
            "title": f"Roost {model} model",
            "release_summary": "local candidate (personalized)"
            if candidate and latest == candidate
            else "signed model update",
        }
        self._queue(state_topic(self.hub_id, f"{model}_update"), json.dumps(doc).encode(), True)

    # ------------------------------------------------------------ uninstall

    def removal_messages(self) -> list[tuple[str, bytes]]:
        """Empty retained payloads: HA removes the device, the broker forgets the states."""
        return uninstall_messages(self.prefix, self.hub_id, self.models)


def _key(decision_topic: str) -> tuple[str, str]:
    """``roost/<hub>/decisions/<model>/<area>`` -> (model, area)."""
    parts = decision_topic.split("/")
    return parts[-2], parts[-1]


def _version_key(version: str) -> tuple[int, ...]:
    parts = []
    for p in version.split("."):
        digits = re.match(r"\d+", p)
        parts.append(int(digits.group()) if digits else 0)
    return tuple(parts)


def uninstall_messages(
    prefix: str, hub_id: str, models: Mapping[str, Any] | Sequence[str] = ()
) -> list[tuple[str, bytes]]:
    """The device config first (HA drops every entity), then the retained states."""
    keys = ["learning_mode", "privacy_budget", *NUMBERS]
    for model in models:
        keys += [f"{model}_status", f"{model}_update"]
    out = [(discovery_topic(prefix, hub_id), b"")]
    out += [(state_topic(hub_id, k), b"") for k in keys]
    out.append((personalization_availability(hub_id), b""))
    return out
