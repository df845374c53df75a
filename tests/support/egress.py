"""Watching a process tree's network calls in a loopback-only network namespace.

``traced(argv, out)`` runs ``argv`` under ``strace -f -e trace=network`` inside a new
network namespace (``unshare --net``, as root) whose only interface is ``lo``: any
attempt to reach another address is recorded by the tracer, and nothing can leave even
while the test looks for it. ``outbound_attempts(trace)`` lists the attempts that are not
to a loopback address, and every DNS query (port 53, loopback included).
``unexpected_destinations(trace, allowed)`` is stricter: only 127.0.0.1 (and ::1) is the
stack's own; any other address, 127.0.0.0/8 included, must be one of the ``allowed``
(address, port) pairs (the fleet's SuperLink and the metrics receiver, given loopback
addresses of their own).
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import re
import shutil
import socket
import struct
import subprocess
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path

import pytest

SEND_CALLS = ("connect", "sendto", "sendmsg", "sendmmsg")
_CALL = re.compile(r"^(?:\[pid\s+)?\d*\]?\s*(?P<call>[a-z_0-9]+)\(")
_ADDRESS = re.compile(
    r"sa_family=(?P<family>AF_INET6?),\s*sin6?_port=htons\((?P<port>\d+)\),.*?"
    r'(?:inet_addr\("(?P<v4>[^"]+)"\)|inet_pton\(AF_INET6,\s*"(?P<v6>[^"]+)")'
)
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1


def require_tracing() -> None:
    """strace and unshare (``make setup`` installs strace) and root, or the test fails
    under CI and is skipped elsewhere."""
    missing = [tool for tool in ("strace", "unshare") if shutil.which(tool) is None]
    reason = ""
    if missing:
        reason = f"{', '.join(missing)} missing (make setup installs strace)"
    elif os.geteuid() != 0:
        reason = "a network namespace needs root"
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the egress test: {reason}")
        pytest.skip(reason)


def bring_loopback_up() -> None:
    """Set ``lo`` up in this (new) network namespace: ``ip link set lo up`` without iproute2."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH14s", b"lo", 0, b"")
        flags = struct.unpack("16sH14s", fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s.fileno(), _SIOCSIFFLAGS, struct.pack("16sH14s", b"lo", flags | _IFF_UP, b""))


# onnxruntime keeps its telemetry quiet where it sees a CI system or its own unit tests
# (measured: with CI=true the plain import made no lookup); Flower's is off with these
# two. A hub has none of them set, so the traced processes must not inherit them either,
# or the test could not fail: each process must turn its telemetry off by itself.
QUIETING = (
    "ORT_DISABLE_TELEMETRY",
    "CI",
    "GITHUB_ACTIONS",
    "GITLAB_CI",
    "CIRCLECI",
    "BUILDKITE",
    "JENKINS_URL",
    "TEAMCITY_VERSION",
    "TF_BUILD",
    "ORT_RUNNING_UNIT_TESTS",
    "FLWR_TELEMETRY_ENABLED",
    "FLWR_DISABLE_UPDATE_CHECK",
)
ROOT = Path(__file__).resolve().parents[2]


def scrubbed_env() -> dict[str, str]:
    """This environment without anything that quiets a library's telemetry."""
    env = {k: v for k, v in os.environ.items() if k not in QUIETING}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "protos")])
    return env


def traced(
    argv: Sequence[str], out: Path, env: Mapping[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in a loopback-only network namespace, its network calls (and those of
    every child) written to ``out``."""
    cmd = ["unshare", "--net", "--", "strace", "-f", "-qq", "--seccomp-bpf", "-e", "trace=network"]
    cmd += ["-o", str(out), *argv]
    return subprocess.run(
        cmd, env=dict(env), capture_output=True, text=True, timeout=timeout, check=False
    )


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def destinations(trace: str) -> Iterator[tuple[str, str, int]]:
    """(line, address, port) of every connect or send to an internet address in an strace
    ``trace=network`` log (IPv4-mapped IPv6 addresses as IPv4)."""
    for line in trace.splitlines():
        call = _CALL.match(line)
        if call is None or call.group("call") not in SEND_CALLS:
            continue
        for m in _ADDRESS.finditer(line):
            yield line.strip(), str(_ip(m.group("v4") or m.group("v6"))), int(m.group("port"))


def outbound_attempts(trace: str) -> list[str]:
    """The lines of an strace ``trace=network`` log that try to reach a non-loopback
    address, or any DNS server."""
    found: list[str] = []
    for line, address, port in destinations(trace):
        if (port == 53 or not _ip(address).is_loopback) and line not in found[-1:]:
            found.append(line)
    return found


def unexpected_destinations(trace: str, allowed: Collection[tuple[str, int]]) -> list[str]:
    """The lines that reach anything but the stack's own address (127.0.0.1, ::1) and
    the ``allowed`` (address, port) pairs, and every DNS query."""
    own = {_ip("127.0.0.1"), _ip("::1")}
    permitted = {(str(_ip(a)), p) for a, p in allowed}
    found: list[str] = []
    for line, address, port in destinations(trace):
        fine = (_ip(address) in own or (address, port) in permitted) and port != 53
        if not fine and line not in found[-1:]:
            found.append(line)
    return found


def reached(trace: str, address: str, port: int) -> bool:
    """Whether any traced process connected or sent to ``address:port``."""
    return any((a, p) == (str(_ip(address)), port) for _, a, p in destinations(trace))
