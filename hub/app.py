"""The hub process: MQTT in, decisions out, through the inference and audit services.

``Hub.run`` keeps one MQTT session alive (reconnecting with backoff, an MQTT will
that marks the hub offline), feeds readings to :class:`Ingest`, and runs the
:class:`DecisionPipeline`. On SIGTERM it stops reading, drains in-flight decisions
(recorded, then published), marks itself offline and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import aiomqtt
import grpc
from prometheus_client import Counter, Gauge

from hub import mqtt
from hub.config import HubConfig
from hub.decisions import DecisionPipeline, Outgoing
from hub.home_windows import SPEC_IDS as HOME_SPEC_IDS
from hub.ingest import Ingest, parse_entity_map
from hub.payloads import DropReason
from hub.topics import READINGS_FILTER, statestream_filter, status_topic
from models.features import FeatureSpec, spec_by_id
from roost.audit.v1 import audit_service_pb2_grpc as audit_grpc
from roost.inference.v1 import inference_service_pb2 as inf_pb
from roost.inference.v1 import inference_service_pb2_grpc as inf_grpc
from services.kit.auth import Role
from services.kit.client import aio_channel
from services.kit.config import ServiceConfig
from services.kit.server import start_metrics, write_ready_file

log = logging.getLogger(__name__)

MQTT_CONNECTED = Gauge("roost_hub_mqtt_connected", "1 while the hub is connected to the broker.")
MQTT_RECONNECTS = Counter(
    "roost_hub_mqtt_reconnects_total", "Broker connection attempts that failed."
)


class Publisher:
    """Publishes decisions (QoS 1); waits out broker outages instead of losing them."""

    def __init__(self) -> None:
        self.client: aiomqtt.Client | None = None
        self.connected = asyncio.Event()

    async def __call__(self, out: Sequence[Outgoing]) -> None:
        remaining = list(out)
        while remaining:
            await self.connected.wait()
            client = self.client
            assert client is not None
            results = await asyncio.gather(
                *(client.publish(o.topic, o.payload, qos=1) for o in remaining),
                return_exceptions=True,
            )
            remaining = [o for o, r in zip(remaining, results, strict=True) if r is not None]
            if remaining:
                # The MQTT loop clears `connected` when it sees the session drop; until
                # then, retry after a short pause rather than spin.
                log.warning("%d decisions not yet published; retrying", len(remaining))
                await asyncio.sleep(0.1)


@dataclass(frozen=True)
class ServedModels:
    """What the hub can feed: per-area FeatureSpec models and home-wide event models."""

    specs: dict[str, FeatureSpec]
    home_models: tuple[str, ...]


async def discover_models(
    stub: inf_grpc.InferenceServiceAsyncStub, stop: asyncio.Event
) -> ServedModels:
    """Ask inference which models it serves (retrying until it answers)."""
    delay = 0.1
    while not stop.is_set():
        try:
            specs: dict[str, FeatureSpec] = {}
            home: list[str] = []
            token = ""
            while True:
                resp: inf_pb.ListModelsResponse = await stub.ListModels(
                    inf_pb.ListModelsRequest(page_token=token), timeout=2.0
                )
                for info in resp.models:
                    if info.feature_spec in HOME_SPEC_IDS:
                        home.append(info.model.name)
                        continue
                    try:
                        specs[info.model.name] = spec_by_id(info.feature_spec)
                    except (KeyError, ImportError) as e:
                        log.warning(
                            "model %s is served but not used by the hub: %s", info.model.name, e
                        )
                token = resp.next_page_token
                if not token:
                    return ServedModels(specs, tuple(home))
        except grpc.aio.AioRpcError as e:
            log.info("waiting for the inference service (%s)", e.code().name)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
    return ServedModels({}, ())


class Hub:
    def __init__(self, config: HubConfig) -> None:
        self.config = config
        self.stop = asyncio.Event()
        certs = config.certs_dir
        self._inf_channel = aio_channel(
            config.inference_target, certs_dir=certs, role=Role.HUB, server_role=Role.INFERENCE
        )
        self._audit_channel = aio_channel(
            config.audit_target, certs_dir=certs, role=Role.HUB, server_role=Role.AUDIT
        )
        self.inference = inf_grpc.InferenceServiceStub(self._inf_channel)
        self.audit = audit_grpc.AuditServiceStub(self._audit_channel)
        self.publisher = Publisher()
        self.pipeline = DecisionPipeline(
            hub_id=config.hub_id,
            inference=self.inference,
            audit=self.audit,
            publish=self.publisher,
            predict_deadline=config.predict_deadline_seconds,
            explain_top_k=config.explain_top_k,
            audit_deadline=config.audit_deadline_seconds,
            max_pending=config.max_pending,
            max_batch=config.max_batch,
            max_in_flight=config.max_in_flight,
            on_overflow=self._overflow,
        )
        self.ingest: Ingest | None = None
        # Set once the hub is connected and subscribed: readings are no longer lost.
        self.ready = asyncio.Event()

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
        self.ingest = Ingest(
            specs=served.specs,
            home_models=served.home_models,
            pipeline=self.pipeline,
            max_payload_bytes=self.config.max_payload_bytes,
            statestream_base=self.config.statestream_base,
            statestream_entities=parse_entity_map(self.config.statestream_entities),
            tz=ZoneInfo(self.config.timezone),
        )
        worker = asyncio.create_task(self.pipeline.run(), name="decisions")
        try:
            await self._mqtt_loop()
        finally:
            drained = await self.pipeline.drain(self.config.drain_seconds)
            if not drained:
                log.warning(
                    "stopped before every decision was published (recorded ones stay in "
                    "the audit log; nothing unrecorded was published)"
                )
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
            await self._inf_channel.close()
            await self._audit_channel.close()

    async def _mqtt_loop(self) -> None:
        cfg = self.config
        delay = cfg.mqtt_reconnect_min_seconds
        status = status_topic(cfg.hub_id)
        while not self.stop.is_set():
            try:
                async with mqtt.client(
                    cfg.mqtt_host,
                    cfg.mqtt_port,
                    identifier=f"roost-hub-{cfg.hub_id}",
                    keepalive=cfg.mqtt_keepalive_seconds,
                    will=aiomqtt.Will(status, b"offline", qos=1, retain=True),
                    max_inflight_messages=1000,
                ) as client:
                    delay = cfg.mqtt_reconnect_min_seconds
                    await client.publish(status, b"online", qos=1, retain=True)
                    await client.subscribe(READINGS_FILTER, qos=0)
                    await client.subscribe(statestream_filter(cfg.statestream_base), qos=0)
                    self.publisher.client = client
                    self.publisher.connected.set()
                    self.ready.set()
                    MQTT_CONNECTED.set(1)
                    log.info("connected to MQTT %s:%d", cfg.mqtt_host, cfg.mqtt_port)
                    await self._consume(client)
                    # Graceful stop: stop reading, finish in-flight decisions, go offline.
                    await client.unsubscribe(READINGS_FILTER)
                    await self.pipeline.drain(cfg.drain_seconds)
                    await client.publish(status, b"offline", qos=1, retain=True)
            except aiomqtt.MqttError as e:
                MQTT_CONNECTED.set(0)
                self.publisher.connected.clear()
                if self.stop.is_set():
                    break
                MQTT_RECONNECTS.inc()
                log.warning("MQTT connection lost (%s); reconnecting in %.1fs", e, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), delay)
                delay = min(delay * 2, cfg.mqtt_reconnect_max_seconds)
        MQTT_CONNECTED.set(0)

    async def _consume(self, client: aiomqtt.Client) -> None:
        """Feed messages to ingest until stop is requested (or the connection drops)."""
        assert self.ingest is not None
        ingest = self.ingest

        async def read() -> None:
            async for message in client.messages:
                payload = message.payload
                data = payload if isinstance(payload, bytes) else str(payload).encode()
                ingest.handle(message.topic.value, data)

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


async def main_async(config: HubConfig) -> None:
    metrics_port = start_metrics(
        ServiceConfig(metrics_host=config.metrics_host, metrics_port=config.metrics_port)
    )
    hub = Hub(config)
    loop = asyncio.get_running_loop()
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
