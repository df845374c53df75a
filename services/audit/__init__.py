"""Audit service: the hub's append-only, verifiable decision log."""
