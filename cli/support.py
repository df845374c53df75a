"""What every ``roost`` sub-command shares: user-facing errors and finding a service."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


class CliError(Exception):
    """A user-facing error: printed without a traceback, exit code 2."""


def stack_target(args: argparse.Namespace, process: str) -> tuple[str, Path]:
    """(HOST:PORT, certificates directory) of ``process``: ``--target``/``--certs`` if
    given, else the stack that ``roost run`` describes in ``<home>/run/stack.json``."""
    address, certs = args.target, args.certs
    if address is None or certs is None:
        stack_file = args.home / "run" / "stack.json"
        if not stack_file.is_file():
            raise CliError(
                f"no running stack ({stack_file} missing): start one with `make run`,"
                " or pass --target HOST:PORT and --certs DIR"
            )
        stack = json.loads(stack_file.read_text())
        proc = stack.get("processes", {}).get(process)
        if address is None:
            if not proc or "port" not in proc:
                raise CliError(f"the running stack has no {process} service")
            address = f"127.0.0.1:{proc['port']}"
        certs = certs or Path(stack["certs_dir"])
    return address, Path(certs)
