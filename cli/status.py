"""``roost status`` and ``roost tail``: look at a running stack from the outside.

The hub's line says whether it is connected; one line per model says whether the hub is
deciding with it, and if not why ("audit unavailable for 12 s, 2,400 readings queued"),
from the hub's ``roost_hub_model_*`` metrics (:mod:`hub.health`).
"""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hub import mqtt
from hub.health import ModelState, describe
from hub.topics import decisions_filter
from services.kit.auth import Role
from services.kit.client import sync_channel


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def _grpc_health(port: int, role: Role, certs_dir: Path, timeout: float) -> Check:
    with sync_channel(
        f"127.0.0.1:{port}", certs_dir=certs_dir, role=Role.ADMIN, server_role=role
    ) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            resp = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.RpcError as e:
            return Check(role.value, False, f"gRPC :{port} {e.code().name}")
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    return Check(
        role.value, resp.status == health_pb2.HealthCheckResponse.SERVING, f"gRPC :{port} {status}"
    )


def _metrics(port: int, timeout: float) -> str:
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=timeout) as r:
        body: bytes = r.read()
    return body.decode()


def metric_value(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith((name + " ", name + "{")):
            return float(line.rsplit(" ", 1)[1])
    return None


_SAMPLE = re.compile(r"^(\w+)\{(.*)\} (\S+)$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """The labelled samples of metric ``name`` in a Prometheus text exposition."""
    out = []
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m and m.group(1) == name:
            out.append((dict(_LABEL.findall(m.group(2))), float(m.group(3))))
    return out


def model_checks(text: str, now: float) -> list[Check]:
    """One check per model the hub decides with: OK while deciding, else why not."""
    states = {
        labels["model"]: ModelState(labels["state"])
        for labels, value in samples(text, "roost_hub_model_state")
        if value == 1 and labels.get("state") in set(ModelState)
    }
    since = {lb["model"]: v for lb, v in samples(text, "roost_hub_model_state_since_seconds")}
    queued = {lb["model"]: int(v) for lb, v in samples(text, "roost_hub_model_backlog")}
    return [
        Check(
            f"hub/{model}",
            state is ModelState.DECIDING,
            describe(state, max(0.0, now - since.get(model, now)), queued.get(model, 0)),
        )
        for model, state in sorted(states.items())
    ]


def audit_integrity_check(metrics_port: int, timeout: float) -> Check:
    """Whether the audit service's re-checks of its stored log found a mismatch."""
    try:
        text = _metrics(metrics_port, timeout)
    except OSError as e:
        return Check("audit log", False, f"metrics unreachable ({e})")
    checked = int(metric_value(text, "roost_audit_integrity_entries_checked_total") or 0)
    if metric_value(text, "roost_audit_integrity_ok") == 0:
        return Check("audit log", False, "stored entries do not match: see the audit log")
    return Check("audit log", True, f"no mismatch in the {checked:,} entries re-checked so far")


def prometheus_check(http_port: int, remote_write: str, timeout: float) -> Check:
    """Metrics sync: Prometheus ready, and how its remote_write fares."""
    base = f"http://127.0.0.1:{http_port}"
    try:
        with urllib.request.urlopen(f"{base}/-/ready", timeout=timeout) as r:  # noqa: S310 (http, loopback)
            ready = r.status == 200
        with urllib.request.urlopen(f"{base}/metrics", timeout=timeout) as r:  # noqa: S310
            text = r.read().decode()
    except OSError as e:
        return Check("prometheus", False, f"http :{http_port} unreachable ({e})")
    sent = sum(v for _, v in samples(text, "prometheus_remote_storage_samples_total"))
    failed = sum(v for _, v in samples(text, "prometheus_remote_storage_samples_failed_total"))
    return Check(
        "prometheus",
        ready,
        f"http :{http_port} {'ready' if ready else 'NOT READY'}, remote_write to "
        f"{remote_write}: {int(sent)} allow-listed samples sent, {int(failed)} failed",
    )


def check_stack(stack: dict[str, Any], timeout: float = 2.0) -> list[Check]:
    certs = Path(stack["certs_dir"])
    results: list[Check] = []
    broker = stack["broker"]
    with socket.socket() as s:
        s.settimeout(timeout)
        up = s.connect_ex((broker["host"], int(broker["port"]))) == 0
    results.append(Check("mosquitto", up, f"mqtt {broker['host']}:{broker['port']}"))
    for name, proc in stack["processes"].items():
        state = proc.get("state", "running")
        if state != "running":  # `roost run` is restarting it (or the simulator finished)
            results.append(Check(name, state == "finished", f"{state}: {proc.get('detail', '')}"))
            continue
        if name in ("mosquitto", "simulator"):
            continue
        if name == "prometheus":
            results.append(
                prometheus_check(int(proc["http_port"]), str(proc["remote_write"]), timeout)
            )
            continue
        if "port" in proc:
            results.append(_grpc_health(int(proc["port"]), Role(name), certs, timeout))
        if name == "audit" and "metrics_port" in proc:
            results.append(audit_integrity_check(int(proc["metrics_port"]), timeout))
        if name == "hub":
            try:
                text = _metrics(int(proc["metrics_port"]), timeout)
            except OSError as e:
                results.append(Check("hub", False, f"metrics unreachable ({e})"))
                continue
            connected = metric_value(text, "roost_hub_mqtt_connected") == 1
            published = sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("roost_hub_decisions_total{") and 'outcome="published"' in line
            )
            results.append(
                Check(
                    "hub",
                    connected,
                    f"mqtt {'connected' if connected else 'DISCONNECTED'}, "
                    f"{int(published)} decisions published",
                )
            )
            results.extend(model_checks(text, time.time()))
    return results


def render(results: list[Check]) -> str:
    width = max(len(r.name) for r in results)
    return "\n".join(f"{'OK  ' if r.ok else 'FAIL'}  {r.name:{width}}  {r.detail}" for r in results)


async def tail_decisions(
    host: str, port: int, hub_id: str, limit: int = 0, login: Mapping[str, Any] | None = None
) -> None:
    """Print decisions as they come; ``login``: the broker login (home mode)."""
    seen = 0
    async with mqtt.client(
        host, port, identifier=f"roost-tail-{id(object())}", **(login or {})
    ) as client:
        await client.subscribe(decisions_filter(hub_id), qos=1)
        async for message in client.messages:
            payload = message.payload
            raw = payload if isinstance(payload, bytes) else str(payload).encode()
            doc = json.loads(raw)
            print(
                f"{doc['decided_at'][11:23]}  {doc['entity_id']:22} {doc['label']:10} "
                f"conf={doc['confidence']:.3f}  "
                f"model={doc['model']['name']}@{doc['model']['version']}  "
                f"audit#{doc['audit_index']}",
                flush=True,
            )
            seen += 1
            if limit and seen >= limit:
                return
