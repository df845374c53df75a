"""Export bundles for the audit tests: the test log, signing, exporting, and editing a
bundle's lines to forge or damage it."""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from roost.audit.v1 import audit_service_pb2 as pb
from services.audit.bundle_format import FORMAT, ExportFilters
from services.audit.checkpoint import Checkpoint, NoteSigner, sign_checkpoint
from services.audit.compact_range import MemoryTree
from services.audit.export import iter_bundle
from services.audit.merkle import leaf_hash
from services.audit.store import AuditStore
from services.audit.tlog_proof import TlogProof
from services.audit.verify import BundleError, BundleReport, verify_bundle
from tests.support.audit_records import decision

ORIGIN = "roost.local/hub/hub-test"
N = 20
KITCHEN = "binary_sensor.kitchen_occupancy"
HALL = "binary_sensor.hall_occupancy"

Lines = list[bytes]


def logged(i: int) -> pb.Decision:
    """The i-th decision of the test log: two entities, two model versions, two actions,
    and every fifth without inputs."""
    return decision(
        i,
        entity_id=KITCHEN if i % 2 == 0 else HALL,
        model=("occupancy", "1.0.0" if i < 10 else "1.1.0"),
        action="climate.set_temperature" if i % 3 == 0 else "publish",
        with_inputs=i % 5 != 4,
    )


def new_store(db: Path) -> AuditStore:
    """A store at ``db`` holding the N decisions of the test log."""
    s = AuditStore.open(db)
    s.append([logged(i) for i in range(N)])
    return s


def sign(store: AuditStore, signer: NoteSigner, size: int | None = None) -> str:
    """A signed checkpoint of the store's tree at ``size`` (default: current)."""
    size = store.tree_size() if size is None else size
    return sign_checkpoint(signer, Checkpoint(signer.name, size, store.root(size)))


def export(
    store: AuditStore, note: str, filters: ExportFilters | None = None, **kwargs: Any
) -> Lines:
    """The bundle's lines, as an auditor reads them from the file."""
    data = b"".join(
        iter_bundle(store, note=note, origin=ORIGIN, filters=filters or ExportFilters(), **kwargs)
    )
    return data.splitlines(keepends=True)


def verify(lines: Iterable[str | bytes], signer: NoteSigner, **kwargs: Any) -> BundleReport:
    return verify_bundle(lines, signer.verifier(), **kwargs)


def rejects(lines: Lines, signer: NoteSigner, message: str, **kwargs: Any) -> None:
    """The verifier refuses ``lines`` with a BundleError matching ``message``."""
    with pytest.raises(BundleError, match=message):
        verify(lines, signer, **kwargs)


def obj(line: bytes) -> dict[str, Any]:
    out = json.loads(line)
    assert isinstance(out, dict)
    return out


def dump(o: dict[str, Any]) -> bytes:
    return (json.dumps(o) + "\n").encode()


def edit(lines: Lines, n: int, change: Callable[[dict[str, Any]], None]) -> Lines:
    """A copy of ``lines`` with line ``n`` (1-based) edited as JSON."""
    out = list(lines)
    o = obj(out[n - 1])
    change(o)
    out[n - 1] = dump(o)
    return out


def edit_proof(lines: Lines, n: int, **changes: Any) -> Lines:
    """A copy of ``lines`` with fields of line ``n``'s tlog-proof replaced."""

    def change(o: dict[str, Any]) -> None:
        proof = TlogProof.parse(o["proof"])
        o["proof"] = dataclasses.replace(proof, **changes).marshal()

    return edit(lines, n, change)


def synthetic(signer: NoteSigner, leaves: list[bytes]) -> Lines:
    """A bundle over arbitrary leaf data (for records the store would never accept)."""
    tree = MemoryTree(leaf_hash(leaf) for leaf in leaves)
    note = sign_checkpoint(signer, Checkpoint(ORIGIN, tree.size, tree.root()))
    header = {
        "format": FORMAT,
        "origin": ORIGIN,
        "tree_size": tree.size,
        "root_hash": base64.b64encode(tree.root()).decode(),
        "checkpoint": note,
        "complete": True,
        "filters": {},
        "consistency": [],
        "inputs": "included",
        "exported_at": "2026-01-01T00:00:00Z",
    }
    out = [dump(header)]
    for i, leaf in enumerate(leaves):
        proof = TlogProof(i, tuple(tree.inclusion_proof(i)), note, leaf).marshal()
        out.append(dump({"proof": proof, "inputs": None, "inputs_redacted": False}))
    out.append(dump({"end": True, "entries": len(leaves)}))
    return out
