"""Watching a process tree's network calls in a loopback-only network namespace.

``traced(argv, out)`` runs ``argv`` under ``strace -f -e trace=network`` inside a new
network namespace (``unshare --net``, as root) whose only interface is ``lo``: any
attempt to reach another address is recorded by the tracer, and nothing can leave even
while the test looks for it. ``outbound_attempts(trace)`` lists the attempts that are not
to a loopback address, and every DNS query (port 53, loopback included).
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
from collections.abc import Mapping, Sequence
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


def _outbound(family: str, address: str, port: int) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return port == 53 or not ip.is_loopback


def outbound_attempts(trace: str) -> list[str]:
    """The lines of an strace ``trace=network`` log that try to reach a non-loopback
    address, or any DNS server."""
    found = []
    for line in trace.splitlines():
        call = _CALL.match(line)
        if call is None or call.group("call") not in SEND_CALLS:
            continue
        for m in _ADDRESS.finditer(line):
            if _outbound(m.group("family"), m.group("v4") or m.group("v6"), int(m.group("port"))):
                found.append(line.strip())
                break
    return found
