"""Configuration of the hub process (section ``[hub]``, env ``ROOST_HUB_*``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Plausible values per sensor kind ("<kind>=<low>:<high>", both ends included; units as
# the models take them, docs/topics.md). A reading outside is dropped (out_of_range).
DEFAULT_SENSOR_RANGES: tuple[str, ...] = (
    "temperature=-40:85",  # degC
    "humidity=0:100",  # %
    "illuminance=0:200000",  # lx
    "carbon_dioxide=0:10000",  # ppm
    "outdoor_temperature=-90:60",  # degC
    "outdoor_humidity=0:100",  # %
    "energy=0:1000000",  # Wh per reading
    "light_energy=0:1000000",  # Wh per reading
    # Binary sensors: 0 (off/closed) or 1 (on/open).
    "door=0:1",
    "cupboard=0:1",
    "fridge=0:1",
    "freezer=0:1",
    "microwave=0:1",
    "dishwasher=0:1",
    "washing_machine=0:1",
    "toilet_flush=0:1",
    "motion=0:1",
)


@dataclass(frozen=True)
class HubConfig:
    hub_id: str = "local"
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    mqtt_keepalive_seconds: int = 30
    # Broker login (`roost run` home mode: user "hub", a generated 0600 file; k3s:
    # docs/deploy.md): user name and a file holding the password, read
    # at each connect; "" = anonymous. With mqtt_tls_ca_file the connection is TLS and the
    # broker's certificate must chain to that CA and name mqtt_host.
    mqtt_username: str = ""
    mqtt_password_file: Path | None = None
    mqtt_tls_ca_file: Path | None = None
    # Reconnect backoff: doubles from min to max (bounded: deciding resumes within about
    # a second of the broker being back).
    mqtt_reconnect_min_seconds: float = 0.2
    mqtt_reconnect_max_seconds: float = 1.0
    inference_target: str = "127.0.0.1:50051"
    audit_target: str = "127.0.0.1:50052"
    certs_dir: Path = Path("var/certs")
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0
    # A plaintext grpc.health.v1 port on metrics_host for probes, 0 = off; its `liveness`
    # turns NOT_SERVING once the event loop has not run for loop_stall_seconds.
    health_port: int = 0
    loop_stall_seconds: float = 10.0
    # Deadlines of the calls on the decision path.
    predict_deadline_seconds: float = 0.5
    # Occlusion attributions recorded with each decision (its "why"); 0 = none.
    explain_top_k: int = 3
    audit_deadline_seconds: float = 2.0
    # Readings larger than this are dropped (counted, logged at most once a minute per reason).
    max_payload_bytes: int = 1024
    # Plausible range per sensor kind; entries here replace the default of their kind
    # (DEFAULT_SENSOR_RANGES), other kinds keep theirs. Kinds without a range are only
    # checked finite in float32.
    sensor_ranges: tuple[str, ...] = DEFAULT_SENSOR_RANGES
    # State the hub keeps: areas with feature windows, and decision entities (one per
    # per-area model and area, "<model>.<area>"). A reading that would need more is
    # dropped (too_many_areas / too_many_entities); existing ones keep deciding.
    max_areas: int = 128
    max_entities: int = 512
    # Readings held for a decision while inference or audit is slow or down (decided when
    # it is back); beyond, the oldest are dropped (counted: readings_dropped{overloaded}).
    # Recorded decisions are never dropped.
    max_pending: int = 20_000
    # Reading ids remembered per (model, area): a reading that comes again (redelivered
    # by the broker, retried by a sensor) is not decided twice. 0 = no check.
    recent_reading_ids: int = 10_000
    # Readings journal (data_dir/readings.sqlite, docs/reliability.md): a reading is
    # acknowledged to the broker once journaled; after a restart the undecided ones are
    # decided and the newest journal_history decided ones refill the feature windows.
    journal_history: int = 5_000
    # On start, a second, clean MQTT session decides fresh readings at once while the
    # persistent session's backlog is read (hub.catchup, docs/reliability.md). Off by
    # default until it is proven under load: one CI run of the restart test lost a
    # reading with it on, and measured runs showed it taking no readings.
    catchup_live_session: bool = False
    # How often the retained health JSON (roost/<hub_id>/health) is refreshed while a
    # model is not deciding; it is also published on every change.
    health_interval_seconds: float = 5.0
    max_batch: int = 512
    # Batches in flight at once (predicting, recording, publishing overlap).
    max_in_flight: int = 4
    # How long a graceful stop waits for in-flight decisions.
    drain_seconds: float = 10.0
    # Home Assistant mqtt_statestream base topic, and entity mapping
    # "sensor.office_temperature=office/temperature" (area/sensor_kind).
    statestream_base: str = "homeassistant_statestream"
    statestream_entities: tuple[str, ...] = ()
    # IANA time zone of the home (time-of-day features).
    timezone: str = "UTC"
    ready_file: Path | None = None
    log_level: str = "INFO"
    # Where the hub keeps its own small state (Home Assistant settings, last auto mapping).
    data_dir: Path = Path("var/data/hub")
    # Optional services: "" = not deployed (their Home Assistant entities show unavailable).
    personalization_target: str = ""
    update_target: str = ""
    # --- Home Assistant (docs/home-assistant.md) ---------------------------------------
    # MQTT discovery of the "Roost hub" device and its entities.
    ha_discovery: bool = True
    ha_discovery_prefix: str = "homeassistant"
    # How often the hub polls the services for the HA entities (budget, drift, updates).
    ha_poll_seconds: float = 30.0
    ha_update_check_seconds: float = 3600.0
    # REST/websocket API of Home Assistant, for the registries (auto mapping), history
    # import and allow-listed actions. The token file holds a long-lived access token.
    ha_url: str = ""
    ha_token_file: Path | None = None
    # Requests to Home Assistant's API (history reads of a long import take the longest).
    ha_api_timeout_seconds: float = 30.0
    # "explicit": statestream_entities only; "auto": proposed from HA's area, device and
    # entity registries by device_class (statestream_entities still win where given).
    ha_mapping: str = "explicit"
    ha_mapping_refresh_seconds: float = 600.0
    # Allow-list of actions: "<model>.<area>:<label>=<domain>.<service>:<entity_id>";
    # prefix "suggest " to have the hub record (BLOCKED) but never call it.
    ha_actions: tuple[str, ...] = ()
    ha_action_attempts: int = 3
    ha_action_timeout_seconds: float = 5.0
    # Initial thresholds (Home Assistant number entities change and persist them).
    occupancy_threshold: float = 0.5
    drift_psi_alert: float = 0.25
    # When a model drifts, start a DP fine-tuning run (if learning is not paused) at most
    # this often per model, with this privacy target; 0 seconds disables it.
    drift_retrain_seconds: float = 86400.0
    drift_retrain_epsilon: float = 1.0
    # Live samples a feature needs before its PSI can raise the drift alert.
    drift_min_samples: int = 500
    # State messages held while the broker is away (latest per topic); beyond, counted drops.
    ha_buffer_topics: int = 1000
    # Entities of the Roost hub device in Home Assistant; past it, new areas get no entity
    # (still decided; counted in roost_hub_ha_entities_refused_total).
    ha_max_entities: int = 1000
    # A room's prediction with no new decision for this long is shown unavailable in Home
    # Assistant (its expire_after), never as current; 0: never.
    ha_decision_expire_seconds: int = 1800
