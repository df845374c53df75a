"""Typed configuration: one frozen dataclass per service, read once at start-up.

Precedence: the dataclass defaults, then the ``[<section>]`` table of the TOML file
named by ``$ROOST_CONFIG`` (or passed explicitly), then environment variables
``ROOST_<SECTION>_<FIELD>`` (upper case). Nothing else reads ``os.environ``.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar


class ConfigError(ValueError):
    """A configuration value is missing or has the wrong type."""


@dataclass(frozen=True)
class ServiceConfig:
    """Settings every gRPC service shares."""

    host: str = "127.0.0.1"
    port: int = 0
    # Prometheus /metrics; 0 picks a free port (reported in the ready file).
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0
    # Where `roost certs init` put ca.pem, <role>.pem and <role>-key.pem.
    certs_dir: Path = Path("var/certs")
    data_dir: Path = Path("var/data")
    max_message_bytes: int = 4 * 1024 * 1024
    grace_seconds: float = 5.0
    # On SIGTERM, report NOT_SERVING for this long before refusing new RPCs, so that
    # probes and clients move away first (k3s: a few seconds; locally 0).
    drain_delay_seconds: float = 0.0
    keepalive_time_seconds: float = 30.0
    keepalive_timeout_seconds: float = 10.0
    # A plaintext port serving ONLY grpc.health.v1 (same status as the mTLS port), for
    # probes that cannot present a client certificate (kubelet's gRPC probes); 0 = off.
    health_port: int = 0
    # The health port's `liveness` turns NOT_SERVING once the event loop has not run for
    # this long (services/kit/watchdog.py); readiness too, while it lasts.
    loop_stall_seconds: float = 10.0
    # If set, the service writes {"port", "metrics_port", "pid"} here once serving.
    ready_file: Path | None = None
    log_level: str = "INFO"


C = TypeVar("C")


def _coerce(name: str, kind: Any, raw: Any) -> Any:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if raw is None or raw == "":
            return None
        return _coerce(name, args[0], raw)
    if origin is tuple:
        items = raw.split(",") if isinstance(raw, str) else list(raw)
        (item_kind, *_) = typing.get_args(kind)
        return tuple(
            _coerce(name, item_kind, i.strip() if isinstance(i, str) else i)
            for i in items
            if i != ""
        )
    return _coerce_scalar(name, kind, raw)


def _coerce_scalar(name: str, kind: Any, raw: Any) -> Any:
    try:
        if kind is bool:
            return _parse_bool(raw)
        if kind is Path:
            return Path(str(raw))
        if kind in (int, float, str):
            return kind(raw)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config field '{name}': cannot read {raw!r} as {kind}") from e
    raise ConfigError(f"config field '{name}': unsupported type {kind}")


def _parse_bool(raw: Any) -> bool:
    """A bool, or its usual spellings in TOML strings and env values; ValueError otherwise."""
    if isinstance(raw, bool):
        return raw
    value = str(raw).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)


def load_config(
    cls: type[C],
    section: str,
    *,
    file: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> C:
    """Build ``cls`` (a dataclass) from defaults, the TOML file, env and overrides."""
    env = os.environ if env is None else env
    if file is None and env.get("ROOST_CONFIG"):
        file = Path(env["ROOST_CONFIG"])
    values: dict[str, Any] = {}
    if file is not None:
        try:
            table = tomllib.loads(file.read_text()).get(section, {})
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"config file {file}: {e}") from e
        values.update(table)
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(values) - fields
    if unknown:
        raise ConfigError(f"config file [{section}]: unknown keys {sorted(unknown)}")
    prefix = f"ROOST_{section.upper()}_"
    for key, raw in env.items():
        if key.startswith(prefix):
            name = key[len(prefix) :].lower()
            if name in fields:
                values[name] = raw
    values.update(overrides or {})
    typed = {name: _coerce(name, hints[name], raw) for name, raw in values.items()}
    return cls(**typed)
