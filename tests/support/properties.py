"""Settings of the property-based tests (Hypothesis): no example database on disk (runs
stay reproducible from the seed Hypothesis prints) and no per-example deadline (the
machine is shared; speed claims belong in bench/)."""

from __future__ import annotations

from hypothesis import settings

PROPERTIES = settings(max_examples=300, deadline=None, database=None)
