"""The personalization service's Prometheus metrics: scope and model names, counts and
epsilons only; no household value ever becomes a metric label."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

EPSILON_SPENT = Gauge(
    "roost_personalization_epsilon_spent",
    "Privacy budget (epsilon) spent in the current sliding window, by data scope.",
    ["scope"],
)
EPSILON_BUDGET = Gauge(
    "roost_personalization_epsilon_budget",
    "Privacy budget (epsilon) per sliding window, by data scope.",
    ["scope"],
)
JOBS_TOTAL = Counter(
    "roost_personalization_jobs", "Fine-tuning jobs that reached each state.", ["state"]
)
EXAMPLES = Gauge(
    "roost_personalization_examples", "Labelled examples in the local store, by model.", ["model"]
)
EVALUATIONS = Counter(
    "roost_personalization_evaluations_total",
    "Model versions scored against the stored labels (EvaluateVersions).",
    ["model"],
)
LEDGER_CONSISTENT = Gauge(
    "roost_personalization_ledger_consistent",
    "1 if the privacy ledger matched the audit log at its last check, 0 if not (training"
    " is refused until `roost personalize ledger rebuild`).",
)
