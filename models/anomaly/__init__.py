"""Appliance energy anomaly model: spec, data, training and evaluation."""
