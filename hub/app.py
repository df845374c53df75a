"""The hub process: MQTT in, decisions out, through the inference and audit services.

``Hub.run`` keeps one MQTT session alive (reconnecting with backoff, an MQTT will
that marks the hub offline), feeds readings to :class:`Ingest`, and runs the
:class:`DecisionPipeline`. On SIGTERM it stops reading, drains in-flight decisions
(recorded, then published), marks itself offline and exits.

The session is persistent (fixed client id, ``clean_session=False``, subscriptions at
QoS 1), so the broker keeps the readings that arrive while the hub is away (restarted,
upgraded, crashed) and delivers them when it is back. A reading is acknowledged once
the hub's journal holds it (:mod:`hub.intake`, :mod:`hub.journal`): what the hub took
but had not decided when it stopped is decided on the next start, and its feature
windows are refilled from the journal. Redelivered readings are recognised by their
ids (:mod:`hub.backlog`). Whether each
model is deciding is published as retained JSON (:mod:`hub.health`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
from collections.abc import Callable, Sequence
from zoneinfo import ZoneInfo

import aiomqtt
import grpc
from prometheus_client import Counter, Gauge

from hub import mqtt
from hub.action_memory import MEMORY_FILE, ActionMemory
from hub.catchup import marker_topic
from hub.config import HubConfig
from hub.health import DecisionHealth
from hub.homeassistant import mapping as ha_mapping
from hub.homeassistant.bridge import HaBridge
from hub.homeassistant.client import ActionRunner, HaClient, HaUnavailable, read_token
from hub.homeassistant.fleet_entities import FleetStatus
from hub.homeassistant.resume import StateResume
from hub.homeassistant.rooms import Rooms
from hub.homeassistant.settings import Settings
from hub.ingest import Ingest, InputLimits, SensorRef, parse_entity_map
from hub.intake import Intake, Once, Publisher, manual_acks, open_intake
from hub.live import run_live_session
from hub.payloads import DropReason
from hub.peer_streams import StreamedAudit, StreamedInference
from hub.pipeline import DecisionPipeline, Outgoing, Pending, Recorded
from hub.policy import ActionPolicy, parse_action_rules
from hub.served_models import discover_models
from hub.topics import READINGS_FILTER, statestream_filter, status_topic
from roost.audit.v1 import audit_service_pb2_grpc as audit_grpc
from roost.inference.v1 import inference_service_pb2_grpc as inf_grpc
from roost.personalization.v1 import personalization_service_pb2_grpc as pers_grpc
from roost.update.v1 import update_service_pb2_grpc as upd_grpc
from services.kit.auth import Role
from services.kit.config import ServiceConfig
from services.kit.peers import peer_channel
from services.kit.process import start_metrics, write_ready_file

log = logging.getLogger(__name__)

MQTT_CONNECTED = Gauge("roost_hub_mqtt_connected", "1 while the hub is connected to the broker.")
MQTT_RECONNECTS = Counter(
    "roost_hub_mqtt_reconnects_total", "Broker connection attempts that failed."
)


class Hub:
    def __init__(self, config: HubConfig, *, fleet_enabled: bool = False) -> None:
        self.config = config
        # [fleet] enabled: `roost run` (or k3s's fleet component) runs this hub's SuperNode.
        self.fleet_enabled = fleet_enabled
        self.stop = asyncio.Event()
        certs = config.certs_dir
        self._inf_channel = peer_channel(
            config.inference_target, certs_dir=certs, role=Role.HUB, peer=Role.INFERENCE
        )
        self._audit_channel = peer_channel(
            config.audit_target, certs_dir=certs, role=Role.HUB, peer=Role.AUDIT
        )
        self.inference = inf_grpc.InferenceServiceStub(self._inf_channel)
        self.audit = audit_grpc.AuditServiceStub(self._audit_channel)
        self._predict_stream = StreamedInference(self.inference)
        self._append_stream = StreamedAudit(self.audit)
        self._extra_channels: list[grpc.aio.Channel] = []
        self.personalization: pers_grpc.PersonalizationServiceAsyncStub | None = None
        self.update: upd_grpc.UpdateServiceAsyncStub | None = None
        if config.personalization_target:
            ch = peer_channel(
                config.personalization_target,
                certs_dir=certs,
                role=Role.HUB,
                peer=Role.PERSONALIZATION,
            )
            self._extra_channels.append(ch)
            self.personalization = pers_grpc.PersonalizationServiceStub(ch)
        if config.update_target:
            ch = peer_channel(
                config.update_target, certs_dir=certs, role=Role.HUB, peer=Role.UPDATE
            )
            self._extra_channels.append(ch)
            self.update = upd_grpc.UpdateServiceStub(ch)
        self.settings_path = config.data_dir / "ha_settings.json"
        self.settings = Settings.load(
            self.settings_path,
            Settings(
                occupancy_threshold=config.occupancy_threshold,
                drift_psi_alert=config.drift_psi_alert,
            ),
        )
        # Last labels and actions per allow-listed entity, across restarts.
        self.action_memory = ActionMemory.load(config.data_dir / MEMORY_FILE)
        self.policy = ActionPolicy(
            parse_action_rules(config.ha_actions),
            self.settings.occupancy_threshold,
            self.action_memory,
        )
        self.ha_client: HaClient | None = None
        if config.ha_url:
            try:
                self.ha_client = HaClient(
                    config.ha_url,
                    read_token(config.ha_token_file),
                    timeout=config.ha_api_timeout_seconds,
                )
            except HaUnavailable as e:
                log.warning("Home Assistant API not usable: %s", e)
        self.actions = ActionRunner(
            self.ha_client,
            attempts=config.ha_action_attempts,
            timeout=config.ha_action_timeout_seconds,
            memory=self.action_memory,
        )
        self.bridge: HaBridge | None = None
        self.publisher = Publisher()
        self.health = DecisionHealth()
        self.pipeline = DecisionPipeline(
            hub_id=config.hub_id,
            # Each decision's two calls go over one long-lived stream per service.
            inference=self._predict_stream,
            audit=self._append_stream,
            publish=self.publisher,
            predict_deadline=config.predict_deadline_seconds,
            explain_top_k=config.explain_top_k,
            audit_deadline=config.audit_deadline_seconds,
            max_pending=config.max_pending,
            max_batch=config.max_batch,
            max_in_flight=config.max_in_flight,
            on_overflow=self._overflow,
            policy=self.policy,
            on_recorded=self._on_recorded,
            health=self.health,
            recent_ids=config.recent_reading_ids,
            on_settled=self._settled,
            on_published=self._published,
        )
        self.ingest: Ingest | None = None
        self.intake: Intake | None = None
        # HA's current states, read on every (re)connect (hub.homeassistant.resume).
        self.resume: StateResume | None = None
        # HA's names of the areas (the registries), for the areas' devices.
        self.rooms = Rooms(config.hub_id, expire_after_seconds=config.ha_decision_expire_seconds)
        # Set once the hub is connected and subscribed: readings are no longer lost.
        self.ready = asyncio.Event()
        self._helpers: list[asyncio.Task[None]] = []

    def _settled(self, items: Sequence[Pending], outgoing: Sequence[Outgoing]) -> None:
        if self.intake is not None:
            self.intake.settled(items, outgoing)

    def _published(self, outgoing: Sequence[Outgoing]) -> None:
        if self.intake is not None:
            self.intake.published(outgoing)

    async def _on_recorded(self, items: Sequence[Recorded]) -> None:
        """Acknowledged by the audit log: run allowed actions, update Home Assistant."""
        for r in items:
            if r.action is not None:
                self.actions.submit(r.action, r.decision_id)
        if self.bridge is not None:
            await self.bridge.on_recorded(items)

    async def _entity_map(self) -> dict[str, SensorRef]:
        """Explicit statestream entities, merged over the auto mapping when configured."""
        explicit = parse_entity_map(self.config.statestream_entities)
        if self.config.ha_mapping != "auto":
            return explicit
        cache = self.config.data_dir / "ha_mapping.json"
        if self.ha_client is None:
            log.warning("ha_mapping = auto needs ha_url and ha_token_file; using the cache")
            return ha_mapping.merge(ha_mapping.load(cache), explicit)
        try:
            registries = await asyncio.wait_for(
                asyncio.to_thread(self.ha_client.registries), timeout=15.0
            )
        except (HaUnavailable, TimeoutError) as e:
            log.warning("Home Assistant registries unavailable (%s); using the cached mapping", e)
            return ha_mapping.merge(ha_mapping.load(cache), explicit)
        proposal = ha_mapping.propose(registries)
        self.rooms.names.update(proposal.area_names)
        ha_mapping.save(cache, proposal.mapping)
        log.info("auto mapping: %d Home Assistant entities feed Roost", len(proposal.mapping))
        return ha_mapping.merge(proposal.mapping, explicit)

    async def _refresh_mapping(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), self.config.ha_mapping_refresh_seconds)
            if self.ingest is not None and not self.stop.is_set():
                self.ingest.set_entity_map(await self._entity_map())

    async def _publish_health(self, topic: str, payload: bytes) -> None:
        """Retained; skipped while the broker is away (republished on reconnect)."""
        client = self.publisher.client
        if client is None or not self.publisher.connected.is_set():
            return
        with contextlib.suppress(aiomqtt.MqttError):
            await client.publish(topic, payload, qos=1, retain=True)

    def _overflow(self) -> None:
        if self.ingest is not None:
            self.ingest.drops.drop("(pending queue)", DropReason.OVERLOADED, "pending queue full")

    async def run(self) -> None:
        served = await discover_models(self.inference, self.stop)
        if self.stop.is_set():
            return
        log.info(
            "hub %s deciding with models: %s",
            self.config.hub_id,
            sorted([*served.specs, *served.home_models]),
        )
        self.health.track([*served.specs, *served.home_models])
        ingest = functools.partial(
            Ingest,
            specs=served.specs,
            home_models=served.home_models,
            pipeline=self.pipeline,
            max_payload_bytes=self.config.max_payload_bytes,
            statestream_base=self.config.statestream_base,
            statestream_entities=await self._entity_map(),
            tz=ZoneInfo(self.config.timezone),
            limits=InputLimits.from_config(self.config),
        )
        self.ingest = ingest()
        if self.ha_client is not None:
            self.resume = StateResume(
                self.ha_client, self.ingest, timeout=self.config.ha_api_timeout_seconds
            )
        if self.config.ha_discovery:
            self.bridge = HaBridge(
                hub_id=self.config.hub_id,
                prefix=self.config.ha_discovery_prefix,
                models=served.info,
                settings=self.settings,
                settings_path=self.settings_path,
                policy=self.policy,
                inference=self.inference,
                personalization=self.personalization,
                update=self.update,
                fleet=FleetStatus(enabled=self.fleet_enabled, audit=self.audit),
                poll_seconds=self.config.ha_poll_seconds,
                update_check_seconds=self.config.ha_update_check_seconds,
                drift_retrain_seconds=self.config.drift_retrain_seconds,
                drift_retrain_epsilon=self.config.drift_retrain_epsilon,
                drift_min_samples=self.config.drift_min_samples,
                buffer_topics=self.config.ha_buffer_topics,
                max_entities=self.config.ha_max_entities,
                ha_client=self.ha_client,
                rooms=self.rooms,
            )
        worker = asyncio.create_task(self.pipeline.run(), name="decisions")
        self.intake = open_intake(
            self.ingest,
            self.config.data_dir / "readings.sqlite",
            self.config.journal_history,
            # Fresh readings decided at once while the backlog is read (hub.catchup).
            live=ingest() if self.config.catchup_live_session else None,
            marker_topic=marker_topic(self.config.hub_id),
        )
        helpers = self._helpers = [
            asyncio.create_task(self.actions.run(self.stop), name="ha-actions"),
            asyncio.create_task(
                self.health.publish_loop(
                    self.config.hub_id,
                    self._publish_health,
                    self.config.health_interval_seconds,
                    self.stop,
                ),
                name="health",
            ),
        ]
        helpers.append(asyncio.create_task(self.intake.republish(self.publisher), name="outbox"))
        if self.bridge is not None:
            helpers.append(asyncio.create_task(self.bridge.run(self.stop), name="ha-bridge"))
        if self.config.ha_mapping == "auto":
            helpers.append(asyncio.create_task(self._refresh_mapping(), name="ha-mapping"))
        try:
            await self._mqtt_loop()
        finally:
            if self.resume is not None:
                self.resume.cancel()
            for task in helpers:
                task.cancel()
            for task in helpers:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            drained = await self.pipeline.drain(self.config.drain_seconds)
            if not drained:
                log.warning(
                    "stopped before every decision was published (recorded ones stay in "
                    "the audit log; nothing unrecorded was published)"
                )
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
            await self._predict_stream.close()
            await self._append_stream.close()
            await self._inf_channel.close()
            await self._audit_channel.close()
            for ch in self._extra_channels:
                await ch.close()
            self.intake.close()

    async def _mqtt_loop(self) -> None:
        cfg = self.config
        delay = cfg.mqtt_reconnect_min_seconds
        status = status_topic(cfg.hub_id)
        first = True
        while not self.stop.is_set():
            try:
                client = mqtt.client(
                    cfg.mqtt_host,
                    cfg.mqtt_port,
                    # One fixed id and a persistent session: the broker keeps what arrives
                    # for the hub while it is away.
                    identifier=f"roost-hub-{cfg.hub_id}",
                    clean_session=False,
                    keepalive=cfg.mqtt_keepalive_seconds,
                    will=aiomqtt.Will(status, b"offline", qos=1, retain=True),
                    max_inflight_messages=0,  # no window: hub.mqtt.publish_all
                    **mqtt.broker_login(
                        cfg.mqtt_username, cfg.mqtt_password_file, cfg.mqtt_tls_ca_file
                    ),
                )
                ack = manual_acks(client)
                intake = self.intake
                assert intake is not None
                async with client:
                    delay = cfg.mqtt_reconnect_min_seconds
                    await client.publish(status, b"online", qos=1, retain=True)
                    await client.subscribe(READINGS_FILTER, qos=1)
                    await client.subscribe(statestream_filter(cfg.statestream_base), qos=1)
                    await client.subscribe(marker_topic(cfg.hub_id), qos=1)
                    self._catch_up(intake, first=first)
                    first = False
                    if self.bridge is not None:
                        await self.bridge.on_connect(client)
                    await self.publisher.resend(client)  # before any newer decision
                    self.publisher.attach(client)
                    self.health.changed.set()  # republish the health document
                    self.ready.set()
                    if self.resume is not None:
                        self.resume.start()  # statestream sends only changes
                    MQTT_CONNECTED.set(1)
                    log.info("connected to MQTT %s:%d", cfg.mqtt_host, cfg.mqtt_port)
                    try:
                        await self._consume(client, ack)
                    except BaseException:
                        self.publisher.detach()  # in-flight publishes: to the next session
                        raise
                    intake.flush()  # stopping: acknowledge what is journaled
                    # Graceful stop: stop reading, finish in-flight decisions, go offline.
                    # The subscriptions stay in the session (what arrives from now on is
                    # not acknowledged: the broker keeps it for the next start).
                    await self.pipeline.drain(cfg.drain_seconds)
                    await client.publish(status, b"offline", qos=1, retain=True)
            except aiomqtt.MqttError as e:
                MQTT_CONNECTED.set(0)
                self.publisher.detach()
                if self.bridge is not None:
                    self.bridge.on_disconnect()
                if self.stop.is_set():
                    break
                MQTT_RECONNECTS.inc()
                log.warning("MQTT connection lost (%s); reconnecting in %.1fs", e, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), delay)
                delay = min(delay * 2, cfg.mqtt_reconnect_max_seconds)
        MQTT_CONNECTED.set(0)

    def _catch_up(self, intake: Intake, *, first: bool) -> None:
        """Subscribed (the marker topic too): on start, the live session (hub.catchup)."""
        if first:
            task = run_live_session(self.config, intake, self.stop)
            self._helpers.append(asyncio.create_task(task, name="live-session"))
        else:
            intake.reconnected()

    async def _consume(
        self, client: aiomqtt.Client, ack: Callable[[aiomqtt.Message], None]
    ) -> None:
        """Feed messages to ingest until stop is requested (or the connection drops)."""
        assert self.intake is not None
        intake = self.intake
        bridge = self.bridge

        async def read() -> None:
            async for message in mqtt.incoming(client):
                payload = message.payload
                data = payload if isinstance(payload, bytes) else str(payload).encode()
                topic = message.topic.value
                acknowledge = Once(functools.partial(ack, message))
                try:
                    if bridge is not None and bridge.handle(topic, data):
                        acknowledge()
                        continue
                    intake.take(topic, data, acknowledge)
                except Exception:
                    acknowledge()  # not redelivered into a crash loop
                    # The topic, never the payload: `roost run` names it in its crash report.
                    log.critical(
                        "crashed handling a message on topic %s%s",
                        topic,
                        " (retained)" if message.retain else "",
                    )
                    raise

        reader = asyncio.create_task(read(), name="mqtt-reader")
        stop_wait = asyncio.create_task(self.stop.wait())
        try:
            await asyncio.wait({reader, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop_wait.cancel()
            if not reader.done():
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
        if reader.done() and not reader.cancelled():
            error = reader.exception()
            if error is not None:
                raise error


async def main_async(config: HubConfig, *, fleet_enabled: bool = False) -> None:
    metrics_port = start_metrics(
        ServiceConfig(metrics_host=config.metrics_host, metrics_port=config.metrics_port)
    )
    hub = Hub(config, fleet_enabled=fleet_enabled)
    loop = asyncio.get_running_loop()
    mqtt.quiet_socket_races(loop)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, hub.stop.set)
    ready_file = config.ready_file

    async def announce_ready() -> None:
        await hub.ready.wait()
        if ready_file is not None:
            write_ready_file(ready_file, metrics_port=metrics_port)

    announcer = asyncio.create_task(announce_ready())
    try:
        await hub.run()
    finally:
        announcer.cancel()
    log.info("hub stopped")
