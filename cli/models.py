"""``roost models status|stage|rollout|promote|rollback|history|check|publish``.

The online commands talk to the update service (mTLS, ``admin`` identity by default;
``--role auditor`` for read-only ``status``/``history``); the target and certificates
come from the stack of ``roost run`` unless ``--target``/``--certs`` say otherwise.
``publish`` is offline: it signs a model directory into a TUF repository with the
publisher's keys, which never live on a hub, with a canary set of held-out rows and
their true labels by default (``models/canary_build.py``; ``--no-canary`` opts out).
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cli.audit_output import entry_line
from cli.support import CliError, stack_target
from models.datasets import add_data_dir_argument

if TYPE_CHECKING:
    import grpc

    from roost.update.v1 import update_service_pb2 as pb
    from roost.update.v1 import update_service_pb2_grpc as pb_grpc

_STAGES = {0: "-", 1: "staged", 2: "shadow", 3: "A/B", 4: "promoted", 5: "rolled back"}
_SLOTS = {1: "active", 2: "candidate", 3: "previous", 4: "-"}
_SOURCES = {1: "signed", 2: "local", 3: "shipped"}


def _stub(args: argparse.Namespace) -> tuple[grpc.Channel, pb_grpc.UpdateServiceStub]:
    from roost.update.v1 import update_service_pb2_grpc as pb_grpc
    from services.kit.auth import Role
    from services.kit.client import sync_channel

    address, certs = stack_target(args, "update")
    try:
        channel = sync_channel(
            address, certs_dir=certs, role=Role(args.role), server_role=Role.UPDATE
        )
    except FileNotFoundError as e:
        raise CliError(f"no {args.role} credentials in {certs}: {e}") from None
    return channel, pb_grpc.UpdateServiceStub(channel)


def _call(args: argparse.Namespace, method: str, request: Any, timeout: float = 120) -> Any:
    import grpc

    channel, stub = _stub(args)
    with channel:
        try:
            return getattr(stub, method)(request, timeout=timeout)
        except grpc.RpcError as e:
            raise CliError(f"update service: {e.code().name}: {e.details()}") from None


def _all(args: argparse.Namespace, method: str, request: Any, field: str) -> list[Any]:
    """Every item of a paged List RPC: each ``next_page_token`` is passed back unchanged
    (tokens are opaque)."""
    items: list[Any] = []
    while True:
        response = _call(args, method, request)
        items.extend(getattr(response, field))
        if not response.next_page_token:
            return items
        request.page_token = response.next_page_token


def _version(v: pb.ModelVersion) -> str:
    return (
        f"{v.model.name:10} {v.model.version:10} {_SLOTS.get(v.slot, '?'):9} "
        f"{_SOURCES.get(v.source, '?'):7} {v.staged_at.ToDatetime(UTC).isoformat()[:19]}"
        f"  sha256 {v.model.sha256[:16]}"
    )


def render_status(s: pb.RolloutStatus) -> str:
    line = f"{s.model_name:10} active {s.active.version or '-':10}"
    if s.candidate.version:
        stage = _STAGES.get(s.stage, "?")
        share = f" {s.candidate_share:.0%}" if s.stage == 3 else ""
        line += f" candidate {s.candidate.version} ({stage}{share})"
        h = s.health
        if s.HasField("health"):
            line += (
                f"\n{'':10} health: errors {h.candidate_error_rate:.2%} vs"
                f" {h.active_error_rate:.2%}, p99 {h.candidate_p99_latency_seconds * 1e3:.2f}"
                f" vs {h.active_p99_latency_seconds * 1e3:.2f} ms"
            )
            if s.stage == 2:
                line += f", agreement {h.agreement:.1%} of {h.compared_predictions:,}"
            if h.candidate_feedback_count:
                line += (
                    f", feedback accuracy {h.candidate_feedback_accuracy:.1%} vs"
                    f" {h.active_feedback_accuracy:.1%} ({h.candidate_feedback_count} labels)"
                )
        if s.verdict:
            line += f"\n{'':10} verdict: {s.verdict}"
    return line


def cmd_status(args: argparse.Namespace) -> int:
    from roost.update.v1 import update_service_pb2 as pb

    names = [args.model] if args.model else None
    if names is None:
        versions = _all(args, "ListVersions", pb.ListVersionsRequest(), "versions")
        names = sorted({v.model.name for v in versions})
    for name in names:
        status = _call(args, "GetRolloutStatus", pb.GetRolloutStatusRequest(model_name=name))
        print(render_status(status.status))
    return 0


def cmd_stage(args: argparse.Namespace) -> int:
    from roost.update.v1 import update_service_pb2 as pb

    resp = _call(args, "Stage", pb.StageRequest(model_name=args.model, version=args.version))
    print(f"staged: {_version(resp.staged)}")
    print(f"next: roost models rollout {args.model} --shadow")
    return 0


def cmd_rollout(args: argparse.Namespace) -> int:
    from roost.update.v1 import update_service_pb2 as pb

    if args.ab is not None:
        request = pb.StartRolloutRequest(
            model_name=args.model, stage=pb.ROLLOUT_STAGE_AB, candidate_share=args.ab
        )
    else:
        request = pb.StartRolloutRequest(model_name=args.model, stage=pb.ROLLOUT_STAGE_SHADOW)
    print(render_status(_call(args, "StartRollout", request).status))
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    from roost.update.v1 import update_service_pb2 as pb

    resp = _call(args, "Promote", pb.PromoteRequest(model_name=args.model, force=args.force))
    print(f"active: {_version(resp.active)}")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from roost.update.v1 import update_service_pb2 as pb

    resp = _call(
        args, "Rollback", pb.RollbackRequest(model_name=args.model, reason=args.reason or "")
    )
    print(f"active: {_version(resp.active)}")
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    """Installed versions, then every rollout step from the audit log."""
    from roost.audit.v1 import audit_service_pb2 as audit_pb
    from roost.update.v1 import update_service_pb2 as pb
    from services.kit.auth import Role
    from services.kit.client import sync_channel

    listing = pb.ListVersionsRequest(model_name=args.model)
    for v in _all(args, "ListVersions", listing, "versions"):
        print(_version(v))
    address, certs = stack_target(
        argparse.Namespace(home=args.home, target=args.audit_target, certs=args.certs), "audit"
    )
    from roost.audit.v1 import audit_service_pb2_grpc as audit_grpc

    with sync_channel(
        address, certs_dir=certs, role=Role.AUDITOR, server_role=Role.AUDIT
    ) as channel:
        stub = audit_grpc.AuditServiceStub(channel)
        request = audit_pb.QueryDecisionsRequest(
            entity_id=f"roost.model.{args.model}", page_size=1000
        )
        print("-- rollout steps (audit log)")
        while True:
            resp = stub.QueryDecisions(request, timeout=30)
            for entry in resp.entries:
                print(entry_line(entry), "|", entry.decision.policy.reason)
            if not resp.next_page_token:
                break
            request.page_token = resp.next_page_token
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from roost.update.v1 import update_service_pb2 as pb

    updates = _all(args, "CheckForUpdates", pb.CheckForUpdatesRequest(), "updates")
    if not updates:
        print("every model is up to date with the signed repository")
    for u in updates:
        print(f"{u.model.name:10} {u.model.version:10} {u.length_bytes / 1024:.0f} kB available")
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    """Packs a model directory and signs it into the TUF repository (publisher side)."""
    import tempfile

    from models.manifest import ManifestError, load_manifest

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir
        if args.version:
            model_dir = _as_version(args.model_dir, args.version, Path(tmp) / "model")
        try:
            manifest = load_manifest(model_dir)
            if not args.no_canary and manifest.canary is None:
                model_dir = _with_canary(model_dir, args.data_dir, Path(tmp) / "canaried")
                manifest = load_manifest(model_dir)
        except ManifestError as e:
            raise CliError(str(e)) from None
        return _publish(args, model_dir, manifest.name, manifest.version)


def _with_canary(src: Path, data_dir: Path | None, dst: Path) -> Path:
    """A copy of ``src`` carrying the default canary set (models/canary_build.py)."""
    import os
    import shutil

    from models.canary_build import CanaryUnavailable, attach_held_out_canary
    from models.datasets import data_dir_from_env, find_data_dir

    shutil.copytree(src, dst)
    # --data-dir, else $ROOST_DATA_DIR or ../shared/data (read here, at the command's start).
    found = find_data_dir(data_dir) if data_dir else data_dir_from_env(os.environ)
    try:
        manifest = attach_held_out_canary(dst, found)
    except CanaryUnavailable as e:
        raise CliError(
            f"no canary set: {e}; give the held-out data with --data-dir, attach one yourself"
            " (models.canary.attach_canary), or publish without one: --no-canary"
        ) from None
    assert manifest.canary is not None
    rows = len(json.loads((dst / manifest.canary.file).read_text())["inputs"])
    print(f"canary: {rows} held-out rows with their true labels (signed in the bundle)")
    return dst


def _as_version(src: Path, version: str, dst: Path) -> Path:
    """A copy of the model directory ``src`` whose manifest says ``version``."""
    import json
    import shutil

    from models.manifest import MANIFEST_FILE
    from services.kit.errors import RoostError
    from services.modelstore.bundle import parse_version

    try:
        parse_version(version)
    except RoostError as e:
        raise CliError(f"--version: {e}") from None
    shutil.copytree(src, dst)
    raw = json.loads((dst / MANIFEST_FILE).read_text())
    raw["version"] = version
    (dst / MANIFEST_FILE).write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")
    return dst


def _publish(args: argparse.Namespace, model_dir: Path, name: str, version: str) -> int:
    import tempfile

    from cli.tuf_repo import ModelRepository
    from services.kit.errors import RoostError
    from services.modelstore.bundle import pack_bundle

    try:
        if args.init:
            repo = ModelRepository.create(args.repo, args.keys)
            print(f"created a model repository in {args.repo} (keys in {args.keys})")
        else:
            repo = ModelRepository.open(args.repo, args.keys)
        with tempfile.TemporaryDirectory() as tmp:
            info = pack_bundle(model_dir, Path(tmp) / "bundle.tar")
            target = repo.publish(name, info.path, version)
    except RoostError as e:
        raise CliError(str(e)) from None
    print(f"published {target.path} ({target.length} bytes, sha256 {target.sha256[:16]})")
    print(f"hubs trust this repository through {repo.root_path}")
    return 0


def add_commands(msub: Any) -> None:
    """Adds the lifecycle commands to ``roost models``."""

    def online(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--target", help="update service HOST:PORT (default: the stack's)")
        p.add_argument("--certs", type=Path, help="certificates directory (default: the stack's)")
        p.add_argument("--role", default="admin", choices=["admin", "hub", "auditor"])
        return p

    st = online(msub.add_parser("status", help="slots, rollout stage and health per model"))
    st.add_argument("model", nargs="?")
    st.set_defaults(func=cmd_status)

    stage = online(msub.add_parser("stage", help="fetch (TUF-verified) and stage a version"))
    stage.add_argument("model")
    stage.add_argument("version")
    stage.set_defaults(func=cmd_stage)

    ro = online(msub.add_parser("rollout", help="run the candidate in shadow or A/B"))
    ro.add_argument("model")
    mode = ro.add_mutually_exclusive_group(required=True)
    mode.add_argument("--shadow", action="store_true", help="compare, never act")
    mode.add_argument("--ab", type=float, metavar="SHARE", help="serve this share of entities")
    ro.set_defaults(func=cmd_rollout)

    pr = online(msub.add_parser("promote", help="make the candidate active"))
    pr.add_argument("model")
    pr.add_argument(
        "--force",
        action="store_true",
        help="even while the health gate's verdict is failing (recorded in the audit log)",
    )
    pr.set_defaults(func=cmd_promote)

    rb = online(msub.add_parser("rollback", help="withdraw the candidate, or restore previous"))
    rb.add_argument("model")
    rb.add_argument("--reason", help="recorded in the audit log")
    rb.set_defaults(func=cmd_rollback)

    hi = online(msub.add_parser("history", help="versions and every rollout step"))
    hi.add_argument("model")
    hi.add_argument("--audit-target", help="audit service HOST:PORT (default: the stack's)")
    hi.set_defaults(func=cmd_history)

    ck = online(msub.add_parser("check", help="newer signed versions in the repository"))
    ck.set_defaults(func=cmd_check)

    pub = msub.add_parser("publish", help="sign a model into a TUF repository (offline)")
    pub.add_argument("model_dir", type=Path, help="directory with manifest.json and the ONNX")
    pub.add_argument("--repo", type=Path, required=True, help="repository directory")
    pub.add_argument("--keys", type=Path, required=True, help="publisher keys (keep offline)")
    pub.add_argument("--init", action="store_true", help="create the repository first")
    pub.add_argument(
        "--version", help="publish as this version (default: the manifest's), e.g. 1.1.0"
    )
    pub.add_argument(
        "--no-canary",
        action="store_true",
        help="publish without the default canary set of held-out rows (checked at stage)",
    )
    add_data_dir_argument(pub)
    pub.set_defaults(func=cmd_publish)
