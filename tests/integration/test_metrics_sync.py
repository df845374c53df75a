"""Metrics sync: a hub-side Prometheus remote-writes only the allow-listed series, with no
household label, to a second (real) Prometheus; without remote_write_url none runs.

The hub decides on readings from household-looking areas; a leaky exporter beside the
Roost processes plays a buggy process that puts entity ids, areas and values into labels
of an allow-listed metric and of one that is not. The receiver must then hold exactly
what the allow-list file lets leave (an independent reading of its rules applied to what
each process exposes), and no label value containing any of those household strings.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from cli.prometheus_config import ALLOW_LIST, MetricsConfig, load_allow_list
from cli.stack import STACK_FILE, Proc, Stack, wait_for_port
from tests.support.mqtt_helpers import DAY_TS, collect_decisions, publish, readings
from tests.support.prometheus import (
    Series,
    allowed_projection,
    api,
    exposed_series,
    receiver,
    require_prometheus,
    stored_series,
)
from tests.support.stacks import require_mosquitto, start_stack
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
AREAS = ("kitchen", "master_bedroom", "nursery")
# Distinctive values (no substring of a loopback address or a port).
VALUES = {"temperature": 21.37, "humidity": 33.91, "illuminance": 517.3, "carbon_dioxide": 812.6}
LEAKED_ENTITY = "binary_sensor.nursery_cot_motion"
LEAKY_EXPORTER = f"""
import sys, time
from prometheus_client import Counter, Gauge, start_http_server
pending = Gauge("roost_hub_pending_decisions", "allow-listed", ["entity_id", "area"])
pending.labels("{LEAKED_ENTITY}", "nursery").set(21.37)
reading = Gauge("roost_hub_household_reading", "not allow-listed", ["entity_id", "value"])
reading.labels("{LEAKED_ENTITY}", "812.6").set(1)
rpc = Counter("roost_grpc_server_handled_total", "allow-listed", ["service", "method", "code", "area"])
rpc.labels("roost.audit.v1.AuditService", "Append", "UNAVAILABLE", "kitchen").inc()
server, _ = start_http_server(0, addr="127.0.0.1")
print(server.server_port, flush=True)
time.sleep(600)
"""


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text: str = r.read().decode()
    return text


def _start_leaky_exporter(stack: Stack) -> None:
    log = stack.home / "log" / "leaky.log"
    popen = subprocess.Popen(
        [sys.executable, "-c", LEAKY_EXPORTER], stdout=subprocess.PIPE, start_new_session=True
    )
    assert popen.stdout is not None
    port = int(popen.stdout.readline())
    # One more process of the stack: stopped with it, scraped like the others.
    stack.procs["leaky"] = Proc("leaky", popen, log, info={"metrics_port": port})


def _expected(stack: Stack, allow: Any) -> set[Series]:
    """What may reach the receiver now: each target's exposition (with the labels the
    scrape adds; an exposed label clashing with one is renamed exported_<label>), plus
    ``up``, through the allow-list."""
    prom = stack.procs["prometheus"].info["http_port"]
    targets = {
        (("job", "roost"), ("role", name)): int(p.info["metrics_port"])
        for name, p in stack.procs.items()
        if "metrics_port" in p.info
    }
    targets[(("job", "prometheus"),)] = prom
    out: set[Series] = set()
    for target_labels, port in targets.items():
        added = {"instance": f"127.0.0.1:{port}", "hub": stack.hub_id, **dict(target_labels)}
        exposed = [*exposed_series(_scrape(port)), frozenset({("__name__", "up")})]
        for series in exposed:
            labels = {(f"exported_{k}" if k in added else k): v for k, v in series if v}
            labels.update(added)
            labels["__name__"] = dict(series)["__name__"]
            kept = allowed_projection(frozenset(labels.items()), allow)
            if kept is not None:
                out.add(kept)
    return out


async def test_the_receiver_holds_exactly_the_allow_listed_series(tmp_path: Path) -> None:
    require_prometheus()
    allow = load_allow_list(ALLOW_LIST)
    with receiver(tmp_path / "receiver") as receiver_port:
        stack = start_stack(tmp_path / "hub")
        try:
            _start_leaky_exporter(stack)
            async with collect_decisions(stack) as decisions:
                for i, area in enumerate(AREAS):
                    await publish(stack, readings(area, VALUES, DAY_TS + i, f"sync-{area}"))
                got = await decisions.wait_for(len(AREAS), timeout=30)
            cfg = MetricsConfig(
                remote_write_url=f"http://127.0.0.1:{receiver_port}/api/v1/write",
                scrape_interval_seconds=1,
            )
            stack.start_prometheus(cfg)
            household = {*AREAS, *(d["entity_id"] for d in got), LEAKED_ENTITY}
            household |= {f"{v:g}" for v in VALUES.values()}
            # The trap is live: the leak is in what the exporters expose.
            exposed = _scrape(int(stack.procs["leaky"].info["metrics_port"]))
            assert LEAKED_ENTITY in exposed
            assert 'area="kitchen"' in exposed

            def same() -> bool:
                return stored_series(receiver_port) == _expected(stack, allow)

            wait_until(
                same,
                60,
                lambda: (
                    f"receiver = allow-listed series; extra "
                    f"{stored_series(receiver_port) - _expected(stack, allow)}, missing "
                    f"{_expected(stack, allow) - stored_series(receiver_port)}"
                ),
                interval=0.5,
            )
            stored = stored_series(receiver_port)
            names = {dict(s)["__name__"] for s in stored}
            assert names <= set(allow.metrics)
            # Both kinds of metric left: hub health and an RPC failure (not the OK counts).
            assert {"up", "roost_hub_mqtt_connected", "roost_grpc_server_handled_total"} <= names
            assert all(dict(s).get("code") != "OK" for s in stored)
            assert {k for s in stored for k, _ in s} <= set(allow.labels)
            # Nothing anywhere in the receiver names the home.
            for path in ("labels", "label/__name__/values"):
                data = api(receiver_port, path)
                assert isinstance(data, list)
                leaked = {x for x in data for h in household if h in x}
                assert not leaked, leaked
            values = {v for s in stored for _, v in s}
            for label in {k for s in stored for k, _ in s}:
                data = api(receiver_port, f"label/{label}/values")
                assert isinstance(data, list)
                values |= set(data)
            leaked = {(v, h) for v in values for h in household if h in v}
            assert not leaked, leaked
        finally:
            stack.stop()


def _roost_run(home: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    require_mosquitto()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ROOST_METRICS_")}
    with (home / "roost-run.out").open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "cli.main", "--home", str(home), "run", "--speedup", "0"],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**clean, **env},
        )


def _stack_file(home: Path, run: subprocess.Popen[bytes]) -> dict[str, Any]:
    path = home / "run" / STACK_FILE
    wait_until(lambda: path.is_file() or run.poll() is not None, 120, "roost run to start")
    assert run.poll() is None, (home / "roost-run.out").read_text()[-3000:]
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _children(pid: int) -> list[str]:
    """The executables of ``pid``'s child processes."""
    names = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                names.append(os.readlink(stat.parent / "exe"))
        except (OSError, IndexError):
            continue
    return names


def _listen_addresses(port: int) -> set[str]:
    """Local addresses (hex, as in /proc/net/tcp*) with a socket listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


def test_roost_run_starts_no_prometheus_without_remote_write_url(tmp_path: Path) -> None:
    config = tmp_path / "roost.toml"
    config.write_text('[metrics]\nremote_write_url = ""\nscrape_interval_seconds = 1\n')
    run = _roost_run(tmp_path, {"ROOST_CONFIG": str(config)})
    try:
        stack = _stack_file(tmp_path, run)
        assert "prometheus" not in stack["processes"]
        children = _children(run.pid)
        assert len(children) >= 6, children  # the stack is there to look at
        assert not [c for c in children if "prometheus" in c], children
        assert not (tmp_path / "run" / "prometheus").exists()
    finally:
        run.send_signal(signal.SIGTERM)
        assert run.wait(60) == 0


def test_roost_run_supervises_a_loopback_prometheus(tmp_path: Path) -> None:
    require_prometheus()
    with receiver(tmp_path / "receiver") as receiver_port:
        url = f"http://127.0.0.1:{receiver_port}/api/v1/write"
        run = _roost_run(
            tmp_path,
            {"ROOST_METRICS_REMOTE_WRITE_URL": url, "ROOST_METRICS_SCRAPE_INTERVAL_SECONDS": "1"},
        )
        try:
            before = _stack_file(tmp_path, run)["processes"]["prometheus"]
            port = int(before["http_port"])
            assert _listen_addresses(port) == {"0100007F"}  # 127.0.0.1, nothing else
            argv = Path(f"/proc/{before['pid']}/cmdline").read_bytes().split(b"\0")
            assert (
                f"--storage.tsdb.path={tmp_path / 'run' / 'prometheus' / 'data'}".encode() in argv
            )
            assert b"--storage.tsdb.retention.time=6h" in argv
            status = subprocess.run(
                [sys.executable, "-m", "cli.main", "--home", str(tmp_path), "status"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=False,
            )
            assert status.returncode == 0, status.stdout
            assert "OK    prometheus" in status.stdout
            assert f"remote_write to {url}" in status.stdout
            killed_at = time.time()
            os.kill(int(before["pid"]), signal.SIGKILL)

            def restarted() -> dict[str, Any] | None:
                assert run.poll() is None
                path = tmp_path / "run" / STACK_FILE
                prom: dict[str, Any] = json.loads(path.read_text())["processes"]["prometheus"]
                return prom if prom["pid"] != before["pid"] and prom["state"] == "running" else None

            after = wait_until(restarted, 60, "prometheus restarted under roost run")
            assert after["http_port"] == port
            wait_for_port("127.0.0.1", port, 30)
            # The restarted one sends again: each Roost process's `up`, scraped after the kill.
            roles = {"hub", "audit", "inference", "update", "personalization"}

            def fresh_roles() -> set[str]:
                data = api(receiver_port, "query", query="timestamp(up)")
                assert isinstance(data, dict)
                return {
                    r["metric"].get("role", "")
                    for r in data["result"]
                    if float(r["value"][1]) > killed_at
                }

            wait_until(lambda: fresh_roles() >= roles, 60, "fresh samples of every process")
        finally:
            run.send_signal(signal.SIGTERM)
            assert run.wait(60) == 0
