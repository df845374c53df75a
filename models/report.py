"""The table every ``roost models evaluate <task>`` prints: recomputed vs recorded."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from rich.table import Table

TOLERANCE = 1e-4
# int8 kernels differ with the CPU's instruction set (onnxruntime's u8s8 paths on AVX2
# vs AVX-512/VNNI round and saturate differently), so int8 metrics reproduce less exactly.
INT8_TOLERANCE = 2e-3


def tolerance(key: str) -> float:
    """Allowed difference between a recomputed metric ``key`` and its recorded value."""
    return INT8_TOLERANCE if key.endswith("_int8") else TOLERANCE


def within(actual: float, expected: float, key: str = "") -> bool:
    return abs(actual - expected) <= tolerance(key) * max(1.0, abs(expected))


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) >= 10 else f"{value:.4f}"


def comparison_table(
    title: str,
    metrics: Mapping[str, float],
    recorded: Mapping[str, float],
    same: Callable[[float, float, str], bool] = within,
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
        match = want is not None and same(value, want, key)
        ok &= match
        table.add_row(
            key,
            _fmt(value),
            "—" if want is None else _fmt(want),
            "[green]ok[/]" if match else "[red]differs[/]",
        )
    return table, ok
