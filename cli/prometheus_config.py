"""Prometheus configuration for metrics sync: the allow-list, and the config it becomes.

ONE allow-list file (``k3s/components/monitoring/remote-write-allow-list.txt``) says which
series and which labels may leave a hub. :func:`write_relabel_configs` turns it into the
remote_write ``write_relabel_configs``: keep the allow-listed metric names, drop the
excepted series, then ``labelkeep`` the allow-listed labels, so a label that is not on
the list (an entity id, an area, a value) never leaves, whatever a process exports.

``roost run`` (:func:`local_config`) and the k3s monitoring component's init container
(``python -m cli.prometheus_config``, :func:`render_k3s`) both build their Prometheus
configuration from it. Output is JSON, which Prometheus reads as YAML.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
ALLOW_LIST = ROOT / "k3s" / "components" / "monitoring" / "remote-write-allow-list.txt"
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
PROMETHEUS_HINT = (
    "prometheus is not installed ([metrics] remote_write_url is set). On Debian/Ubuntu: "
    "`sudo apt-get install -y prometheus` (make setup does this)"
)


class AllowListError(ValueError):
    """The allow-list file is malformed."""


@dataclass(frozen=True)
class MetricsConfig:
    """``[metrics]`` of roost.toml (env ``ROOST_METRICS_*``): metrics sync, off unless
    ``remote_write_url`` is set."""

    # The central endpoint (Prometheus remote-write protocol); empty: no Prometheus runs.
    remote_write_url: str = ""
    # A file holding the bearer token the endpoint expects (optional).
    bearer_token_file: Path | None = None
    allow_list: Path = ALLOW_LIST
    scrape_interval_seconds: float = 30.0
    # The local TSDB (under the run directory) keeps this little history.
    retention_time: str = "6h"
    retention_size: str = "256MB"
    # Prometheus's own HTTP port, on 127.0.0.1; 0 picks a free one.
    port: int = 0
    binary: str = ""


@dataclass(frozen=True)
class AllowList:
    metrics: tuple[str, ...]
    # (metric, label, value): series of metric whose label is value stay home.
    exceptions: tuple[tuple[str, str, str], ...]
    labels: tuple[str, ...]


def parse_allow_list(text: str) -> AllowList:
    metrics: list[str] = []
    exceptions: list[tuple[str, str, str]] = []
    labels: list[str] = []
    for number, raw in enumerate(text.splitlines(), 1):
        words = raw.split("#", 1)[0].split()
        if not words:
            continue
        match words:
            case ["metric", name] if _NAME.fullmatch(name):
                metrics.append(name)
            case ["metric", name, "except", condition] if _NAME.fullmatch(name):
                label, _, value = condition.partition("=")
                if not _LABEL.fullmatch(label) or not re.fullmatch(r"[A-Za-z0-9_]+", value):
                    raise AllowListError(f"line {number}: bad condition {condition!r}")
                metrics.append(name)
                exceptions.append((name, label, value))
            case ["label", name] if _LABEL.fullmatch(name):
                labels.append(name)
            case _:
                raise AllowListError(f"line {number}: cannot read {raw.strip()!r}")
    if "__name__" not in labels:
        raise AllowListError("`label __name__` is missing: every series would lose its name")
    if len(set(metrics)) != len(metrics):
        raise AllowListError("a metric is listed twice")
    return AllowList(tuple(metrics), tuple(exceptions), tuple(labels))


def load_allow_list(path: Path) -> AllowList:
    return parse_allow_list(path.read_text())


def write_relabel_configs(allow: AllowList) -> list[dict[str, Any]]:
    """Keep the listed names, drop the exceptions, then keep only the listed labels."""
    rules: list[dict[str, Any]] = [
        {"source_labels": ["__name__"], "regex": "|".join(allow.metrics), "action": "keep"}
    ]
    for metric, label, value in allow.exceptions:
        rules.append(
            {"source_labels": ["__name__", label], "regex": f"{metric};{value}", "action": "drop"}
        )
    rules.append({"regex": "|".join(allow.labels), "action": "labelkeep"})
    return rules


def check_remote_write_url(url: str) -> str:
    """https, or http to a loopback address (a test receiver): never a token in clear."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"[metrics] remote_write_url {url!r}: not an http(s) URL")
    if parts.scheme == "http":
        try:
            loopback = ipaddress.ip_address(parts.hostname).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(
                f"[metrics] remote_write_url {url!r}: plain http only to a loopback address"
            )
    return url


def remote_write(
    url: str, allow: AllowList, *, bearer_token_file: Path | None, send_deadline: float
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "url": check_remote_write_url(url),
        "queue_config": {
            "max_samples_per_send": 500,
            "batch_send_deadline": f"{send_deadline:g}s",
        },
        "write_relabel_configs": write_relabel_configs(allow),
    }
    if bearer_token_file is not None:
        entry["authorization"] = {"type": "Bearer", "credentials_file": str(bearer_token_file)}
    return entry


def local_config(
    cfg: MetricsConfig, *, hub_id: str, targets: Mapping[str, int], self_port: int
) -> dict[str, Any]:
    """The Prometheus of ``roost run``: scrapes each process (role -> metrics port on
    127.0.0.1) and itself, and remote-writes the allow-listed series."""
    interval = f"{cfg.scrape_interval_seconds:g}s"
    return {
        "global": {
            "scrape_interval": interval,
            "scrape_timeout": f"{min(cfg.scrape_interval_seconds, 10.0):g}s",
            "evaluation_interval": interval,
            "external_labels": {"hub": hub_id},
        },
        "scrape_configs": [
            {
                "job_name": "roost",
                "static_configs": [
                    {"targets": [f"127.0.0.1:{port}"], "labels": {"role": role}}
                    for role, port in sorted(targets.items())
                ],
            },
            {"job_name": "prometheus", "static_configs": [{"targets": [f"127.0.0.1:{self_port}"]}]},
        ],
        "remote_write": [
            remote_write(
                cfg.remote_write_url,
                load_allow_list(cfg.allow_list),
                bearer_token_file=cfg.bearer_token_file,
                send_deadline=min(cfg.scrape_interval_seconds, 30.0),
            )
        ],
    }


def find_prometheus(configured: str = "") -> str:
    for candidate in (configured, shutil.which("prometheus"), "/usr/bin/prometheus"):
        if candidate and Path(candidate).is_file():
            return candidate
    raise FileNotFoundError(PROMETHEUS_HINT)


def prometheus_argv(binary: str, cfg: MetricsConfig, config: Path, port: int) -> list[str]:
    """Loopback only; the TSDB beside its config (under the run directory), kept small."""
    return [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={config.parent / 'data'}",
        f"--storage.tsdb.retention.time={cfg.retention_time}",
        f"--storage.tsdb.retention.size={cfg.retention_size}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]


def render_k3s(template: dict[str, Any], allow: AllowList) -> dict[str, Any]:
    """The k3s monitoring component's prometheus.yml: ``template`` (its scrape setup and
    its ``remote_write`` entries, each without ``write_relabel_configs``) with the
    allow-list's rules in every remote_write entry."""
    rendered = dict(template)
    entries = []
    for entry in template.get("remote_write", []):
        if "write_relabel_configs" in entry:
            raise AllowListError("the template has its own write_relabel_configs")
        entries.append({**entry, "write_relabel_configs": write_relabel_configs(allow)})
    rendered["remote_write"] = entries
    return rendered


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cli.prometheus_config TEMPLATE.json ALLOW_LIST OUT``: the k3s init
    container's step (the template is JSON, the YAML subset the standard library reads)."""
    p = argparse.ArgumentParser(prog="python -m cli.prometheus_config")
    p.add_argument("template", type=Path)
    p.add_argument("allow_list", type=Path)
    p.add_argument("out", type=Path)
    args = p.parse_args(argv)
    try:
        rendered = render_k3s(
            json.loads(args.template.read_text()), load_allow_list(args.allow_list)
        )
    except (OSError, ValueError) as e:
        print(f"prometheus_config: {e}", file=sys.stderr)
        return 1
    args.out.write_text(json.dumps(rendered, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
