"""``roost audit ...``: what auditors run against the decision log.

Online commands talk to the audit service over mTLS with a read-only ``auditor``
identity (``redact`` needs ``admin``): ``tail``, ``query``, ``show``, ``checkpoint``,
``export``, ``redact``. ``verify`` is offline: it needs only the bundle and the hub's
public verifier key, no server and no credentials.

By default the service and the certificates are found through the stack started by
``roost run`` (``<home>/run/stack.json``); ``--target`` and ``--certs`` point elsewhere
(e.g. a hub under k3s). The key that checks signatures is never taken from the hub
silently (``cli.audit_keys``).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cli import audit_witness
from cli.audit_keys import add_trust_flags, load_verifier, note_checkpoint, required_verifier
from cli.audit_output import ProgressBar, entry_json, entry_line, show_entry, timestamp
from cli.audit_scope import Matches, parse_filters, summary_lines
from cli.support import CliError, stack_target

if TYPE_CHECKING:
    import grpc

    from roost.audit.v1 import audit_service_pb2 as pb
    from roost.audit.v1 import audit_service_pb2_grpc as pb_grpc

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


# --------------------------------------------------------------------------- helpers


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """An ISO 8601 time (naive = UTC) or a duration ago: ``90s``, ``15m``, ``2h``, ``7d``."""
    now = now or datetime.now(UTC)
    if m := _RELATIVE.match(text.strip()):
        return now - timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise CliError(
            f"time {text!r}: use ISO 8601 (2026-11-25T08:00) or an age such as 2h or 7d"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _stub(
    args: argparse.Namespace, default_role: str = "auditor"
) -> tuple[grpc.Channel, pb_grpc.AuditServiceStub]:
    """A channel and stub as ``--role``, or ``default_role`` when it is not given."""
    from roost.audit.v1 import audit_service_pb2_grpc as pb_grpc
    from services.kit.auth import Role
    from services.kit.client import sync_channel

    role = args.role or default_role
    address, certs_dir = stack_target(args, "audit")
    try:
        channel = sync_channel(
            address,
            certs_dir=certs_dir,
            role=Role(role),
            server_role=Role.AUDIT,
            max_message_bytes=16 * 1024 * 1024,
        )
    except FileNotFoundError as e:
        raise CliError(f"no {role} credentials in {certs_dir}: {e}") from None
    return channel, pb_grpc.AuditServiceStub(channel)


def _rpc_error(e: Exception) -> CliError:
    import grpc

    if isinstance(e, grpc.RpcError):
        code = e.code()
        details = e.details()
        return CliError(f"audit service: {code.name}: {details}")
    return CliError(str(e))


# --------------------------------------------------------------------------- commands


def cmd_tail(args: argparse.Namespace) -> int:
    from roost.audit.v1 import audit_service_pb2 as pb

    channel, stub = _stub(args)
    with channel:
        try:
            resp = stub.QueryDecisions(
                pb.QueryDecisionsRequest(page_size=args.lines, newest_first=True), timeout=10
            )
            last = -1
            for entry in reversed(resp.entries):
                print(entry_json(entry) if args.json else entry_line(entry), flush=True)
                last = max(last, entry.index)
            while args.follow:
                time.sleep(args.interval)
                for entry in _newer_than(stub, last):
                    print(entry_json(entry) if args.json else entry_line(entry), flush=True)
                    last = entry.index
        except KeyboardInterrupt:
            return 0
        except Exception as e:
            raise _rpc_error(e) from e
    return 0


def _newer_than(stub: pb_grpc.AuditServiceStub, last: int) -> list[pb.LogEntry]:
    """Entries with index > ``last``, oldest first (pages backwards until ``last``)."""
    from roost.audit.v1 import audit_service_pb2 as pb

    found: list[pb.LogEntry] = []
    token = ""
    while True:
        resp = stub.QueryDecisions(
            pb.QueryDecisionsRequest(page_size=500, newest_first=True, page_token=token),
            timeout=10,
        )
        fresh = [e for e in resp.entries if e.index > last]
        found.extend(fresh)
        if len(fresh) < len(resp.entries) or not resp.next_page_token:
            return list(reversed(found))
        token = resp.next_page_token


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    """Query/export filter fields from --since/--until/--entity/--model/--action."""
    fields: dict[str, Any] = {}
    model_name, _, model_version = (args.model or "").partition("@")
    fields.update(
        entity_id=args.entity or "",
        model_name=model_name,
        model_version=model_version,
        action=args.action or "",
    )
    return fields


def _set_times(request: Any, args: argparse.Namespace, fields: tuple[str, str]) -> None:
    """--since/--until into the request's two Timestamp ``fields``."""
    for text, field in zip((args.since, args.until), fields, strict=True):
        if text:
            getattr(request, field).FromDatetime(parse_time(text))


def cmd_query(args: argparse.Namespace) -> int:
    from roost.audit.v1 import audit_service_pb2 as pb

    request = pb.QueryDecisionsRequest(page_size=min(args.limit, 1000), **_filters(args))
    _set_times(request, args, ("start_time", "end_time"))
    printed = 0
    channel, stub = _stub(args)
    with channel:
        try:
            while printed < args.limit:
                resp = stub.QueryDecisions(request, timeout=30)
                for entry in resp.entries[: args.limit - printed]:
                    print(entry_json(entry) if args.json else entry_line(entry))
                    printed += 1
                if not resp.next_page_token:
                    break
                request.page_token = resp.next_page_token
        except Exception as e:
            raise _rpc_error(e) from e
    if not args.json:
        print(f"-- {printed} entr{'y' if printed == 1 else 'ies'}", file=sys.stderr)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from roost.audit.v1 import audit_service_pb2 as pb
    from services.audit.checkpoint import CheckpointError, verify_checkpoint
    from services.audit.merkle import ProofError, leaf_hash, verify_inclusion

    verifier = required_verifier(args, "show")
    channel, stub = _stub(args)
    with channel:
        try:
            entry = stub.GetDecision(
                pb.GetDecisionRequest(decision_id=args.decision_id), timeout=10
            ).entry
            cp = stub.GetCheckpoint(pb.GetCheckpointRequest(), timeout=10)
            proof = stub.GetInclusionProof(
                pb.GetInclusionProofRequest(decision_id=args.decision_id, tree_size=cp.tree_size),
                timeout=10,
            )
        except Exception as e:
            raise _rpc_error(e) from e
    if args.json:
        print(entry_json(entry))
    else:
        show_entry(entry, sys.stdout)
    try:
        root = verify_checkpoint(verifier, cp.signed_note, verifier.name).root_hash
    except CheckpointError as e:
        print(f"PROOF FAILED: checkpoint signature: {e}", file=sys.stderr)
        return 1
    signed = f"signed by {verifier.name}"
    if args.trust_local_key:
        signed += ", with the hub's own key"
    try:
        if leaf_hash(entry.record) != entry.leaf_hash:
            raise ProofError("the record does not hash to its leaf")
        verify_inclusion(entry.leaf_hash, entry.index, cp.tree_size, list(proof.hashes), root)
    except ProofError as e:
        print(f"PROOF FAILED: {e}", file=sys.stderr)
        return 1
    print(f"proof        included in the log of {cp.tree_size} entries ({signed})")
    return 0


def cmd_checkpoint(args: argparse.Namespace) -> int:
    from roost.audit.v1 import audit_service_pb2 as pb
    from services.audit.checkpoint import CheckpointError, verify_checkpoint

    channel, stub = _stub(args)
    with channel:
        try:
            cp = stub.GetCheckpoint(pb.GetCheckpointRequest(), timeout=10)
        except Exception as e:
            raise _rpc_error(e) from e
    verifier = load_verifier(args.pubkey, args.home, trust_local=args.trust_local_key)
    if verifier is None:
        print("signature not checked (no --pubkey)", file=sys.stderr)
    else:
        try:
            verify_checkpoint(verifier, cp.signed_note, verifier.name)
        except CheckpointError as e:
            raise CliError(f"the service's checkpoint does not verify: {e}") from None
    if args.out:
        _write_file(args.out, cp.signed_note.encode())
        print(f"checkpoint of {cp.tree_size} entries saved to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(cp.signed_note)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from roost.audit.v1 import audit_service_pb2 as pb

    previous = [note_checkpoint(Path(p).read_text()).size for p in args.previous]
    request = pb.ExportDecisionsRequest(
        consistency_from_sizes=previous, omit_inputs=args.no_inputs, **_filters(args)
    )
    # An export's --since/--until select by logged_at, so the range is provably complete.
    _set_times(request, args, ("logged_from", "logged_until"))
    out: Path = args.out
    partial = out.with_name(out.name + ".partial")
    written = 0
    channel, stub = _stub(args)
    with channel, ProgressBar("exporting", None, "B") as advance:
        try:
            with partial.open("wb") as f:
                for chunk in stub.ExportDecisions(request, timeout=args.timeout):
                    f.write(chunk.chunk)
                    written += len(chunk.chunk)
                    advance(len(chunk.chunk))
                f.flush()
                os.fsync(f.fileno())
        except Exception as e:
            partial.unlink(missing_ok=True)
            raise _previous_hint(_rpc_error(e)) from e
    partial.replace(out)
    entries = _count_entries(out)
    filtered = args.entity or args.model or args.action
    print(
        f"exported {entries} entries ({written / 1e6:.1f} MB) to {out}"
        + (" (filtered by the hub: proves membership only)" if filtered else "")
        + f"\nverify offline with: roost audit verify {out} --pubkey <checkpoint.vkey>",
        file=sys.stderr,
    )
    return 0


def _previous_hint(error: CliError) -> CliError:
    """The service names the request field; the user gave ``--previous``."""
    text = str(error)
    field = "consistency_from_sizes: "
    if field not in text:
        return error
    problem = text.split(field, 1)[1]
    return CliError(f"--previous: a checkpoint's tree size: {problem}")


def _count_entries(path: Path) -> int:
    with path.open("rb") as f:
        lines = sum(1 for _ in f)
    return max(0, lines - 2)  # header and trailer


def cmd_verify(args: argparse.Namespace) -> int:
    from services.audit.verify import BundleError, verify_bundle

    select = parse_filters(args.filter)
    matches = Matches()
    verifier = required_verifier(args, "verify")
    previous = [Path(p).read_text() for p in args.previous]
    witnesses = audit_witness.load_witness_keys(args.witness_key)
    bundle: Path = args.bundle
    if not bundle.is_file():
        raise CliError(f"{bundle}: no such file")
    started = time.perf_counter()
    with bundle.open("rb") as f, ProgressBar("verifying", bundle.stat().st_size, "B") as advance:

        def lines() -> Iterator[bytes]:
            for line in f:
                advance(len(line))
                yield line

        try:
            report = verify_bundle(
                lines(),
                verifier,
                previous_checkpoints=previous,
                witnesses=witnesses,
                min_witnesses=args.min_witnesses,
                select=select,
                on_match=matches.add,
            )
        except BundleError as e:
            print(f"FAILED: {bundle}: {e}", file=sys.stderr)
            return 1
    print("\n".join(summary_lines(report, time.perf_counter() - started)))
    if report.witnessed_by:
        print(f"  cosigned by witnesses: {', '.join(report.witnessed_by)}")
    if select is not None:
        print(f"{report.matched:,} verified entries match {' '.join(args.filter)}:")
        print("\n".join(matches.lines))
    return 0


def cmd_redact(args: argparse.Namespace) -> int:
    from roost.audit.v1 import audit_service_pb2 as pb

    channel, stub = _stub(args, "admin")
    with channel:
        try:
            resp = stub.RedactInputs(
                pb.RedactInputsRequest(decision_id=args.decision_id, reason=args.reason),
                timeout=30,
            )
        except Exception as e:
            raise _rpc_error(e) from e
    print(
        f"inputs of {args.decision_id} redacted at {timestamp(resp.redacted_at)};"
        f" the redaction is log entry #{resp.redaction_index}"
    )
    return 0


def _write_file(path: Path, data: bytes) -> None:
    from services.kit.files import write_atomic

    write_atomic(path, data, 0o644)


# --------------------------------------------------------------------------- parser


def _filter_flags(p: argparse.ArgumentParser) -> None:
    when = "logged_at, a provably complete range" if p.prog.endswith("export") else "decided_at"
    p.add_argument("--since", help=f"ISO time or age (2h, 7d); inclusive ({when})")
    p.add_argument("--until", help=f"ISO time or age; exclusive ({when})")
    p.add_argument("--entity", help="entity id, e.g. binary_sensor.kitchen_occupancy")
    p.add_argument("--model", help="model name, or name@version")
    p.add_argument("--action", help="action taken, e.g. publish")


def add_parser(sub: Any) -> None:
    """Registers ``roost audit ...`` on the top-level subparsers."""
    audit = sub.add_parser(
        "audit",
        help="query, prove and verify the decision log",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    audit.add_argument("--target", help="audit service HOST:PORT (default: the local stack's)")
    audit.add_argument("--certs", type=Path, help="certificates directory (default: the stack's)")
    audit.add_argument(
        "--role",
        choices=["auditor", "admin"],
        help="identity to call the service with (default: auditor, read-only; admin for redact)",
    )
    commands = audit.add_subparsers(dest="audit_command", required=True)

    tail = commands.add_parser("tail", help="the latest entries (and new ones with -f)")
    tail.add_argument("-n", "--lines", type=int, default=20)
    tail.add_argument("-f", "--follow", action="store_true")
    tail.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    tail.add_argument("--json", action="store_true", help="one JSON entry per line")
    tail.set_defaults(func=cmd_tail)

    query = commands.add_parser("query", help="entries matching filters, oldest first")
    _filter_flags(query)
    query.add_argument("--limit", type=int, default=100)
    query.add_argument("--json", action="store_true", help="one JSON entry per line")
    query.set_defaults(func=cmd_query)

    show = commands.add_parser("show", help="one decision in full, with its inclusion proof")
    show.add_argument("decision_id")
    add_trust_flags(show)
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_show)

    cp = commands.add_parser("checkpoint", help="the latest signed checkpoint (keep it)")
    cp.add_argument("--out", type=Path, help="save the note to this file")
    add_trust_flags(cp, required=False)
    cp.set_defaults(func=cmd_checkpoint)

    export = commands.add_parser("export", help="an offline-verifiable bundle of entries")
    export.add_argument("out", type=Path, help="bundle file to write (.roost-audit.jsonl)")
    _filter_flags(export)
    export.add_argument(
        "--previous",
        action="append",
        default=[],
        metavar="NOTE",
        help="a checkpoint you saved earlier: the bundle proves the log grew from it",
    )
    export.add_argument("--no-inputs", action="store_true", help="leave stored inputs out")
    export.add_argument("--timeout", type=float, default=600.0)
    export.set_defaults(func=cmd_export)

    verify = commands.add_parser("verify", help="verify a bundle offline (no server)")
    verify.add_argument("bundle", type=Path)
    add_trust_flags(verify)
    verify.add_argument(
        "--previous",
        action="append",
        default=[],
        metavar="NOTE",
        help="an earlier checkpoint you hold: prove the log only grew since",
    )
    audit_witness.add_verify_arguments(verify)
    verify.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="list the verified entries matching entity=…, model=name[@version] or action=…"
        " (repeatable, ANDed; applied here, on the signed records)",
    )
    verify.set_defaults(func=cmd_verify)
    audit_witness.add_parser(commands)

    redact = commands.add_parser("redact", help="erase a decision's stored inputs (admin)")
    redact.add_argument("decision_id")
    redact.add_argument("--reason", required=True, help="logged with the redaction")
    redact.set_defaults(func=cmd_redact)
