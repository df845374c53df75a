"""The Prometheus metrics of the Home Assistant bridge and its coordinator.

Labels carry entity kinds, model names and outcomes only, never household values.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

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
HA_BUFFER_DROPS = Counter(
    "roost_hub_ha_buffer_dropped_total",
    "Home Assistant state messages dropped because the buffer was full (broker away).",
)
HA_ENTITIES = Gauge("roost_hub_ha_components", "Entities of the Roost hub device.")
HA_ENTITIES_REFUSED = Counter(
    "roost_hub_ha_entities_refused_total",
    "Decisions of a (model, area) that has no Home Assistant entity because the device "
    "reached ha_max_entities (they are still decided, recorded and published).",
)
HA_NOTICES = Counter(
    "roost_hub_ha_notices_total",
    "Messages to the owner in Home Assistant (kind: notification, logbook) by outcome "
    "(sent, failed, unconfigured: no ha_url/token, so the hub log only).",
    ["kind", "outcome"],
)
