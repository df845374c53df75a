"""Appliance energy anomaly model: spec, data, network, training, model card and
evaluation."""
