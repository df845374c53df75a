"""The kit's helpers for error messages: caller input is echoed quoted and cut short,
and no status message grows without bound."""

from __future__ import annotations

from services.kit.errors import ECHO_MAX_CHARS, MESSAGE_MAX_CHARS, clip, echo


def test_echo_quotes_short_values_and_cuts_long_ones() -> None:
    assert echo("occupancy") == "'occupancy'"
    long = "x" * 3_000_000
    echoed = echo(long)
    assert echoed == f"{'x' * ECHO_MAX_CHARS!r}... (3000000 characters)"
    assert len(echoed) < 80
    # Quoting makes control characters visible instead of splitting log lines.
    assert echo("a\nb") == "'a\\nb'"


def test_clip_bounds_a_whole_message() -> None:
    assert clip("short") == "short"
    clipped = clip("m" * 10_000)
    assert clipped.startswith("m" * MESSAGE_MAX_CHARS)
    assert clipped.endswith("[cut: 10000 characters]")
    assert len(clipped) < MESSAGE_MAX_CHARS + 40
