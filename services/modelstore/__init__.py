"""The on-disk model store: inference reads it, update is its only writer."""
