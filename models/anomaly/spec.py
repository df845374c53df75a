"""The anomaly model's feature spec (torch-free, no data access).

Sensors are Home Assistant style kinds of ONE area (the whole home): the appliance
energy meter (``energy``, Wh per 10 minutes), the lighting energy meter
(``light_energy``), one indoor humidity (the kitchen's in the training data: cooking
and kettles show in it) and the time of day. Temperatures and outdoor weather are
left out on purpose: they follow the season, and the training data covers one
winter, so a model leaning on them drifts in spring (and every extra sensor kind is
one more that must be reporting for the hub's window to be ready). The model sees
the last :data:`WINDOW` snapshots, one every 10 minutes: enough history to see a
load that will not go away, a meter stuck at zero or frozen on one value.

``FeatureSpec`` has no day-of-week feature, so the model has none either.
"""

from __future__ import annotations

from models.features import FeatureSpec, SensorFeature

WINDOW = 12  # snapshots: two hours of history (the current step is the last)
STEP_SECONDS = 600.0  # one snapshot every 10 minutes (the meter's cadence)

ANOMALY_V1 = FeatureSpec(
    spec_id="anomaly/v1",
    sensors=(
        SensorFeature("energy", "energy", "Wh"),
        SensorFeature("light_energy", "light_energy", "Wh"),
        SensorFeature("humidity", "humidity", "%"),
    ),
    time_of_day=True,
    window=WINDOW,
    step_seconds=STEP_SECONDS,
    # One reading per sensor every 10 minutes is within FeatureWindow's staleness rule
    # (a sensor not heard from for more than 15 minutes makes the window not ready).
    max_staleness_seconds=900.0,
    # The energy reading takes each step's snapshot (training feeds it first per row).
    step_kind="energy",
)

# The served output columns, in order (regression: ``output_labels``).
OUTPUT_LABELS = (
    "expected_wh",
    "anomaly_score",
    "stuck_on_score",
    "surge_score",
    "dropout_score",
    "frozen_score",
)
# An alert is ``anomaly_score >= ANOMALY_THRESHOLD`` (each component score is its raw
# statistic divided by its threshold calibrated on the validation period).
ANOMALY_THRESHOLD = 1.0

# Column indices in the last dimension of the input.
ENERGY = ANOMALY_V1.feature_names.index("energy")
LIGHT_ENERGY = ANOMALY_V1.feature_names.index("light_energy")
HUMIDITY = ANOMALY_V1.feature_names.index("humidity")
HOUR_SIN = ANOMALY_V1.feature_names.index("hour_sin")
HOUR_COS = ANOMALY_V1.feature_names.index("hour_cos")
# Output column indices.
EXPECTED_WH = OUTPUT_LABELS.index("expected_wh")
ANOMALY_SCORE = OUTPUT_LABELS.index("anomaly_score")
