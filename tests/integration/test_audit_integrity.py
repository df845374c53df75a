"""Integrity at rest with a real audit service: a record edited in audit.db while the
service was down is reported at start (log, metric, `roost status`), and the service
keeps serving."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.stack import Stack
from cli.status import audit_integrity_check
from roost.audit.v1 import audit_service_pb2 as pb
from roost.audit.v1 import audit_service_pb2_grpc as pb_grpc
from services.kit.auth import Role
from services.kit.client import sync_channel
from tests.support.audit_records import decision
from tests.support.metrics import metric

pytestmark = pytest.mark.integration


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    st = Stack(tmp_path, hub_id="integrity")
    yield st
    st.stop()


def stub(stack: Stack) -> tuple[object, pb_grpc.AuditServiceStub]:
    channel = sync_channel(
        f"127.0.0.1:{stack.port_of(Role.AUDIT)}",
        certs_dir=stack.certs_dir,
        role=Role.HUB,
        server_role=Role.AUDIT,
    )
    return channel, pb_grpc.AuditServiceStub(channel)


def test_an_edited_record_is_reported_at_start(stack: Stack) -> None:
    env = {"ROOST_AUDIT_INPUTS_RETENTION_DAYS": "0"}
    stack.start_service(Role.AUDIT, env)
    channel, audit = stub(stack)
    with channel:  # type: ignore[attr-defined]
        audit.AppendDecisions(
            pb.AppendDecisionsRequest(decisions=[decision(i) for i in range(50)]), timeout=10
        )
    metrics_port = int(stack.procs["audit"].info["metrics_port"])
    assert audit_integrity_check(metrics_port, 5).ok
    stack.stop_one("audit")

    conn = sqlite3.connect(stack.home / "data" / "audit" / "audit.db")
    conn.execute("DROP TRIGGER entries_no_update")
    (record,) = conn.execute("SELECT record FROM entries WHERE idx = 42").fetchone()
    edited = bytes(record).replace(b"publish", b"ignore!")
    conn.execute("UPDATE entries SET record = ? WHERE idx = 42", (edited,))
    conn.commit()
    conn.close()

    stack.start_service(Role.AUDIT, env)
    assert metric(stack, "roost_audit_integrity_ok", "audit") == 0
    assert metric(stack, "roost_audit_integrity_mismatches_total", "audit") >= 1
    log = stack.procs["audit"].log_tail(50)
    assert "entry 42: the stored leaf hash does not match its record" in log
    check = audit_integrity_check(int(stack.procs["audit"].info["metrics_port"]), 5)
    assert not check.ok
    # It keeps serving.
    channel, audit = stub(stack)
    with channel:  # type: ignore[attr-defined]
        response = audit.AppendDecisions(
            pb.AppendDecisionsRequest(decisions=[decision(50)]), timeout=10
        )
    assert response.tree_size == 51
