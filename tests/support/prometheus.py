"""A real Prometheus as a metrics-sync receiver (``--web.enable-remote-write-receiver``),
and reading series from Prometheus's HTTP API and from text expositions."""

from __future__ import annotations

import json
import os
import re
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from cli.prometheus_config import AllowList, find_prometheus
from cli.stack import free_port, wait_for_port

Series = frozenset[tuple[str, str]]
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)(?: \S+)?$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def require_prometheus() -> str:
    try:
        return find_prometheus()
    except FileNotFoundError as e:
        if os.environ.get("CI"):
            pytest.fail(f"CI must have prometheus (make setup installs it): {e}")
        pytest.skip(str(e))


@contextmanager
def receiver(home: Path, host: str = "127.0.0.1") -> Iterator[int]:
    """A second Prometheus on loopback (``host``) that only receives remote writes;
    yields its port."""
    binary = require_prometheus()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "receiver.yml"
    config.write_text("global: {scrape_interval: 1h}\n")  # scrapes nothing
    port = free_port()
    with (home / "receiver.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={home / 'data'}",
                f"--web.listen-address={host}:{port}",
                "--web.enable-remote-write-receiver",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(host, port, 30)
        yield port
    finally:
        proc.terminate()
        proc.wait(30)


def api(port: int, path: str, host: str = "127.0.0.1", **params: str) -> object:
    url = f"http://{host}:{port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=5) as r:
        doc = json.loads(r.read())
    assert doc["status"] == "success", doc
    return doc["data"]


def stored_series(port: int, host: str = "127.0.0.1") -> set[Series]:
    """Every series a Prometheus holds (its HTTP API), as sets of (label, value)."""
    data = api(port, "series", host, **{"match[]": '{__name__=~".+"}', "start": "0"})
    assert isinstance(data, list)
    return {frozenset(s.items()) for s in data}


def exposed_series(text: str) -> set[Series]:
    """The series of a text exposition (a process's /metrics)."""
    out: set[Series] = set()
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m and not line.startswith("#"):
            out.add(frozenset({("__name__", m.group(1)), *LABEL.findall(m.group(2) or "")}))
    return out


def allowed_projection(series: Series, allow: AllowList) -> Series | None:
    """What the allow-list lets leave of ``series`` (an independent reading of the file's
    rules, to compare Prometheus's write_relabel_configs against); None if nothing."""
    labels = dict(series)
    if labels["__name__"] not in allow.metrics:
        return None
    for metric, label, value in allow.exceptions:
        if labels["__name__"] == metric and labels.get(label) == value:
            return None
    return frozenset((k, v) for k, v in series if k in allow.labels)
