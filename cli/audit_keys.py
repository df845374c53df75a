"""Which key checks the hub's signatures, for ``roost audit``.

Never the hub's own, silently: ``verify`` and ``show`` need ``--pubkey`` (the key the
auditor obtained out of band and kept), or ``--trust-local-key`` to use the hub's own
``checkpoint.vkey``, which proves nothing against whoever controls the hub and is
announced as such on stderr. ``checkpoint`` checks with either, or says it did not.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from cli.support import CliError

if TYPE_CHECKING:
    from services.audit.checkpoint import Checkpoint, NoteVerifier

# Default verifier key of a local stack, relative to --home.
LOCAL_VKEY = Path("data") / "audit" / "checkpoint.vkey"


def load_verifier(
    spec: str | None, home: Path, *, trust_local: bool = False
) -> NoteVerifier | None:
    """The verifier key from ``--pubkey`` (a vkey or a file holding one), else with
    ``trust_local`` the local stack's (announced on stderr), else None."""
    from services.audit.checkpoint import CheckpointError, NoteVerifier

    if spec is None:
        if not trust_local:
            return None
        local = home / LOCAL_VKEY
        if not local.is_file():
            raise CliError(f"--trust-local-key: no verifier key at {local}")
        spec = str(local)
        print(
            f"WARNING: trusting the hub's own key {local} (--trust-local-key): this"
            " proves nothing against whoever controls the hub; use --pubkey with a key"
            " you saved elsewhere",
            file=sys.stderr,
        )
    elif trust_local:
        raise CliError("give --pubkey or --trust-local-key, not both")
    text = spec
    path = Path(spec)
    if "+" not in spec or path.is_file():
        try:
            text = path.read_text().strip()
        except OSError as e:
            raise CliError(
                f"--pubkey {spec}: not a verifier key and not a readable file ({e})"
            ) from None
    try:
        return NoteVerifier.from_vkey(text)
    except CheckpointError as e:
        raise CliError(f"--pubkey: not a valid verifier key: {e}") from None


def required_verifier(args: argparse.Namespace, command: str) -> NoteVerifier:
    """The key ``--pubkey`` or ``--trust-local-key`` names; CliError without either."""
    verifier = load_verifier(args.pubkey, args.home, trust_local=args.trust_local_key)
    if verifier is None:
        raise CliError(
            f"{command} needs the hub's public key: --pubkey <vkey or file> (saved when"
            " you set up auditing), or --trust-local-key to use this hub's own key"
        )
    return verifier


def note_checkpoint(note: str) -> Checkpoint:
    """The (unverified) checkpoint body of a signed note."""
    from services.audit.checkpoint import Checkpoint, CheckpointError

    body, sep, _ = note.partition("\n\n")
    try:
        if not sep:
            raise CheckpointError("no blank line between the text and the signatures")
        return Checkpoint.parse(body + "\n")
    except CheckpointError as e:
        raise CliError(f"not a signed checkpoint note: {e}") from None


def add_trust_flags(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    """``--pubkey`` and ``--trust-local-key`` on a command's parser."""
    need = "required, or --trust-local-key" if required else "optional"
    p.add_argument("--pubkey", help=f"the hub's verifier key, or a file holding it ({need})")
    p.add_argument(
        "--trust-local-key",
        action="store_true",
        help="check signatures with the hub's own checkpoint.vkey (proves nothing"
        " against the hub's operator)",
    )
