"""Reading a stack process's Prometheus metrics in tests (its ``/metrics`` endpoint)."""

from __future__ import annotations

import re
import urllib.request

from cli.stack import Stack

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")


def scrape(stack: Stack, proc: str = "hub") -> str:
    """The text exposition of ``proc``'s metrics endpoint."""
    port = stack.procs[proc].info["metrics_port"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text: str = r.read().decode()
    return text


def metric(stack: Stack, name: str, proc: str = "hub", **labels: str) -> float:
    """The sum of ``name`` over the series of ``proc`` carrying ``labels`` (0 if none)."""
    want = {f'{k}="{v}"' for k, v in labels.items()}
    total = 0.0
    for line in scrape(stack, proc).splitlines():
        m = SAMPLE.match(line)
        if m and m.group(1) == name and want <= set((m.group(2) or "").split(",")):
            total += float(m.group(3))
    return total
