"""Monitoring: the remote-write allow-list names metrics the code exports; scrape targets."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from cli.prometheus_config import ALLOW_LIST, main, parse_allow_list
from tests.support.k3s import (
    METRICS_PORT,
    ROOST_ROLES,
    ROOT,
    config_data,
    named,
    pod_spec,
    yaml_module,
)


def _metric_names_in_code() -> set[str]:
    names: set[str] = set()
    for path in [*ROOT.glob("services/**/*.py"), *ROOT.glob("hub/**/*.py")]:
        names.update(re.findall(r'"(roost_[a-z0-9_]+)"', path.read_text()))
    return names


def _rendered_by_init_container(edge: list[dict[str, Any]], tmp: Path) -> dict[str, Any]:
    """prometheus.yml as the edge overlay's init container writes it (its argv, run on
    the ConfigMap's files)."""
    deploy = named(edge, "Deployment", "roost-prometheus")
    (init,) = pod_spec(deploy)["initContainers"]
    assert init["command"][:3] == ["python", "-m", "cli.prometheus_config"]
    template, allow_list, out = (Path(a) for a in init["command"][3:])
    files = {}
    for path in (template, allow_list):
        assert path.parent == Path("/etc/prometheus")
        files[path] = tmp / path.name
        files[path].write_text(config_data(edge, "roost-prometheus-config", path.name))
    # The ConfigMap carries the very file `roost run` reads.
    assert files[allow_list].read_text() == ALLOW_LIST.read_text()
    args = pod_spec(deploy)["containers"][0]["args"]
    assert f"--config.file={out}" in args
    assert main([str(files[template]), str(files[allow_list]), str(tmp / "out.yml")]) == 0
    doc: dict[str, Any] = json.loads((tmp / "out.yml").read_text())
    return doc


def test_remote_write_allow_list(rendered: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    yaml = yaml_module()
    edge = rendered["edge"]
    prom = _rendered_by_init_container(edge, tmp_path)
    (remote,) = prom["remote_write"]
    keep = [r for r in remote["write_relabel_configs"] if r["action"] == "keep"]
    assert keep, "no allow-list of metric names"
    assert keep[0]["source_labels"] == ["__name__"]
    allowed = set(keep[0]["regex"].strip().split("|"))
    assert allowed == set(parse_allow_list(ALLOW_LIST.read_text()).metrics)
    # Only allow-listed labels leave (the last rule, after the metric filters).
    assert remote["write_relabel_configs"][-1]["action"] == "labelkeep"
    assert all(re.fullmatch(r"[a-z_:][a-z0-9_:]*", n) for n in allowed), "names, not patterns"
    unknown = {n for n in allowed if n.startswith("roost_")} - _metric_names_in_code()
    assert not unknown, f"allow-listed metrics no process exports: {unknown}"
    # The endpoint's port is the one its egress policy opens.
    url_port = int(re.match(r"https://[^/:]+:(\d+)/", remote["url"])[1])  # type: ignore[index]
    policy = named(edge, "NetworkPolicy", "roost-prometheus-remote-write")["spec"]
    assert [p["port"] for r in policy["egress"] for p in r["ports"]] == [url_port]
    # dev: no remote_write at all.
    dev = yaml.safe_load(config_data(rendered["dev"], "roost-prometheus-config", "prometheus.yml"))
    assert "remote_write" not in dev
    scrape = yaml.safe_load(config_data(edge, "roost-prometheus-config", "scrape.yml"))
    targets = {
        t for job in scrape["scrape_configs"] for s in job["static_configs"] for t in s["targets"]
    }
    assert {f"roost-{r}:{METRICS_PORT}" for r in ROOST_ROLES} <= targets
