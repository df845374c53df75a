"""The occupancy candidate spec with history features (torch-free, no data access).

``occupancy/v2`` is ``occupancy/v1`` (the latest temperature, humidity, illuminance
and CO2 plus the time of day, in the same order) followed by features of the recent
readings that tell "CO2 still high" from "someone is here": the CO2 slope, how long
the light has held its level, and the light's range over the last half hour. They are
computed by :class:`models.features.FeatureWindow` from the readings as they arrive,
so the hub and training build them the same way. No shipped model uses this spec yet
(see ``docs/models.md``: it did not beat the light rule on every split).
"""

from __future__ import annotations

from models.features import OCCUPANCY_V1, FeatureSpec, HistoryFeature

CO2_SLOPE_SECONDS = 900.0  # 15 minutes: CO2 rises while people breathe, falls once they left
LIGHT_HISTORY_SECONDS = 1800.0  # half an hour of light
LIGHT_STEADY_DELTA_LX = 10.0  # a light level within this of the latest has "held"

OCCUPANCY_V2 = FeatureSpec(
    spec_id="occupancy/v2",
    sensors=OCCUPANCY_V1.sensors,
    time_of_day=True,
    history=(
        HistoryFeature("co2_slope", "carbon_dioxide", "slope", CO2_SLOPE_SECONDS, "ppm/min"),
        HistoryFeature(
            "light_steady",
            "illuminance",
            "steady",
            LIGHT_HISTORY_SECONDS,
            "min",
            delta=LIGHT_STEADY_DELTA_LX,
        ),
        HistoryFeature("light_min", "illuminance", "min", LIGHT_HISTORY_SECONDS, "lx"),
        HistoryFeature("light_max", "illuminance", "max", LIGHT_HISTORY_SECONDS, "lx"),
    ),
)
