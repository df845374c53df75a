"""Signed model updates: deterministic bundles shipped through The Update Framework."""
