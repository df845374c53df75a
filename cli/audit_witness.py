"""``roost audit witness``: run a witness of a hub's decision log; and witness keys for
``roost audit verify --witness-key K --min-witnesses N``.

A witness (C2SP tlog-witness) cosigns a hub's checkpoints only if each extends the
last one it cosigned, so a hub that forks or rolls back its log cannot get a
checkpoint cosigned. Run it on a machine the hub's owner does not control alone: a
laptop, a second hub, the auditor's computer (docs/audit.md, Witnesses).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cli.support import CliError

if TYPE_CHECKING:
    from services.audit.cosignature import CosignatureVerifier

DEFAULT_LISTEN = "127.0.0.1:7380"


def _key_text(spec: str, flag: str) -> str:
    """A key given inline, or the content of the file ``spec`` names."""
    path = Path(spec)
    if "+" in spec and not path.is_file():
        return spec.strip()
    try:
        return path.read_text().strip()
    except OSError as e:
        raise CliError(f"{flag} {spec}: not a key and not a readable file ({e})") from None


def load_witness_keys(specs: list[str]) -> list[CosignatureVerifier]:
    """``--witness-key`` values (a witness vkey, or a file holding one)."""
    from services.audit.checkpoint import CheckpointError
    from services.audit.cosignature import CosignatureVerifier

    keys = []
    for spec in specs:
        try:
            keys.append(CosignatureVerifier.from_vkey(_key_text(spec, "--witness-key")))
        except CheckpointError as e:
            raise CliError(f"--witness-key {spec}: {e}") from None
    return keys


def cmd_witness(args: argparse.Namespace) -> int:
    from services.audit.checkpoint import CheckpointError, NoteVerifier, load_or_create_signer
    from services.audit.cosignature import Cosigner
    from services.audit.witness import Witness
    from services.audit.witness_http import WitnessServer
    from services.kit.files import write_atomic
    from services.kit.process import configure_process

    configure_process("INFO")
    try:
        logs = [NoteVerifier.from_vkey(_key_text(spec, "--log")) for spec in args.log]
    except CheckpointError as e:
        raise CliError(f"--log: not a hub's checkpoint verifier key: {e}") from None
    state: Path = args.state or args.home / "witness"
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        cosigner = Cosigner.from_note_signer(
            load_or_create_signer(state / "witness.key", args.name)
        )
    except CheckpointError as e:
        raise CliError(f"witness key: {e}") from None
    vkey = cosigner.vkey()
    write_atomic(state / "witness.vkey", (vkey + "\n").encode("ascii"), 0o644)
    host, _, port = args.listen.rpartition(":")
    if not port.isdigit():
        raise CliError(f"--listen {args.listen}: want HOST:PORT")
    try:
        server = WitnessServer((host or "127.0.0.1", int(port)), Witness(cosigner, logs, state))
    except OSError as e:
        raise CliError(f"--listen {args.listen}: {e}") from None
    bound = server.server_address[1]
    print(f"witness {args.name} listening on http://{host}:{bound}", file=sys.stderr)
    print(f"witness key (give it to the hub and to auditors): {vkey}", flush=True)
    if args.ready_file:
        info = {"pid": os.getpid(), "port": bound, "vkey": vkey}
        write_atomic(args.ready_file, json.dumps(info).encode())

    def stop(*_: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def add_verify_arguments(verify: argparse.ArgumentParser) -> None:
    """``roost audit verify --witness-key K ... --min-witnesses N``."""
    verify.add_argument(
        "--witness-key",
        action="append",
        default=[],
        metavar="VKEY",
        help="a witness's key (or its witness.vkey file) you trust; repeatable",
    )
    verify.add_argument(
        "--min-witnesses",
        type=int,
        default=0,
        metavar="N",
        help="require valid cosignatures by N of those witnesses on the bundle's checkpoint",
    )


def add_parser(commands: Any) -> None:
    """Registers ``roost audit witness``."""
    witness = commands.add_parser(
        "witness",
        help="run a witness that cosigns a hub's checkpoints (C2SP tlog-witness)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    witness.add_argument(
        "--log",
        action="append",
        required=True,
        metavar="VKEY",
        help="the hub's checkpoint verifier key (or its checkpoint.vkey file); repeatable",
    )
    witness.add_argument("--listen", default=DEFAULT_LISTEN, help="HOST:PORT (port 0: any)")
    witness.add_argument(
        "--name",
        default=f"witness.{socket.gethostname().replace(' ', '-')}/roost",
        help="the witness's key name (created with its key on first start)",
    )
    witness.add_argument(
        "--state", type=Path, help="key and per-log checkpoints (default <home>/witness)"
    )
    witness.add_argument("--ready-file", type=Path, help="write {port, pid, vkey} when serving")
    witness.set_defaults(func=cmd_witness)
