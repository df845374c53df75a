"""The comfort model's feature spec (torch-free, no data access).

Sensors are Home Assistant style kinds of ONE room (``temperature``, ``humidity``)
plus the outdoor weather (``outdoor_temperature``, ``outdoor_humidity``), and the
time of day. The model sees the last :data:`WINDOW` snapshots, one every 10 minutes.
"""

from __future__ import annotations

from models.features import FeatureSpec, SensorFeature

WINDOW = 12  # snapshots: two hours of history
STEP_SECONDS = 600.0  # one snapshot every 10 minutes (the dataset's cadence)
HORIZON_STEPS = (3, 6)  # +30 min and +60 min, in steps
OUTPUT_LABELS = ("temperature_30min", "temperature_60min")

COMFORT_V1 = FeatureSpec(
    spec_id="comfort/v1",
    sensors=(
        SensorFeature("temperature", "temperature", "degC"),
        SensorFeature("humidity", "humidity", "%"),
        SensorFeature("outdoor_temperature", "outdoor_temperature", "degC"),
        SensorFeature("outdoor_humidity", "outdoor_humidity", "%"),
    ),
    time_of_day=True,
    window=WINDOW,
    step_seconds=STEP_SECONDS,
    # The dataset's 10-minute cadence is within FeatureWindow's default staleness rule
    # (a sensor not heard from for more than 15 minutes makes the window not ready).
    max_staleness_seconds=900.0,
    # The temperature reading takes each step's snapshot (training feeds it first per row).
    step_kind="temperature",
)

# Column indices in the last dimension of the input.
TEMPERATURE = COMFORT_V1.feature_names.index("temperature")
HUMIDITY = COMFORT_V1.feature_names.index("humidity")
OUTDOOR_TEMPERATURE = COMFORT_V1.feature_names.index("outdoor_temperature")
OUTDOOR_HUMIDITY = COMFORT_V1.feature_names.index("outdoor_humidity")
HOUR_SIN = COMFORT_V1.feature_names.index("hour_sin")
HOUR_COS = COMFORT_V1.feature_names.index("hour_cos")
