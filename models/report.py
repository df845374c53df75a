"""The table every ``roost models evaluate <task>`` prints: recomputed vs recorded."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from rich.table import Table

TOLERANCE = 1e-4


def within(actual: float, expected: float) -> bool:
    return abs(actual - expected) <= TOLERANCE * max(1.0, abs(expected))


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) >= 10 else f"{value:.4f}"


def comparison_table(
    title: str,
    metrics: Mapping[str, float],
    recorded: Mapping[str, float],
    same: Callable[[float, float], bool] = within,
) -> tuple[Table, bool]:
    """Each recomputed metric beside the manifest's; True if all agree."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("recomputed", justify="right")
    table.add_column("manifest", justify="right")
    table.add_column("", justify="center")
    ok = True
    for key, value in metrics.items():
        want = recorded.get(key)
        match = want is not None and same(value, want)
        ok &= match
        table.add_row(
            key,
            _fmt(value),
            "—" if want is None else _fmt(want),
            "[green]ok[/]" if match else "[red]differs[/]",
        )
    return table, ok
