"""`roost audit ...` against a real audit service, as an auditor would use it:
save a checkpoint, query, show with a proof, redact (admin), export, then verify the
bundle offline against the saved checkpoint; a tampered bundle fails."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cli.main import main
from cli.stack import Stack
from roost.audit.v1 import audit_service_pb2 as pb
from roost.audit.v1 import audit_service_pb2_grpc as pb_grpc
from services.audit.tlog_proof import TlogProof
from services.kit.auth import Role
from services.kit.client import sync_channel
from tests.support.audit_records import decision

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    st = Stack(tmp_path_factory.mktemp("audit-cli"), hub_id="cli")
    try:
        st.start_service(Role.AUDIT)
        st.write_stack_file()
        yield st
    finally:
        st.stop()


def append(stack: Stack, decisions: list[pb.Decision]) -> None:
    with sync_channel(
        f"127.0.0.1:{stack.port_of(Role.AUDIT)}",
        certs_dir=stack.certs_dir,
        role=Role.HUB,
        server_role=Role.AUDIT,
    ) as channel:
        pb_grpc.AuditServiceStub(channel).AppendDecisions(
            pb.AppendDecisionsRequest(decisions=decisions), timeout=10
        )


def roost(stack: Stack, *args: str) -> int:
    return main(["--home", str(stack.home), "audit", *args])


def test_an_auditor_session(
    stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    vkey = str(stack.home / "data" / "audit" / "checkpoint.vkey")
    append(stack, [decision(i, entity_id=f"light.room_{i % 3}") for i in range(30)])
    old = tmp_path / "old.note"
    assert roost(stack, "checkpoint", "--out", str(old)) == 0
    append(stack, [decision(i, entity_id=f"light.room_{i % 3}") for i in range(30, 45)])
    capsys.readouterr()

    assert roost(stack, "query", "--entity", "light.room_1", "--json") == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 15
    assert {json.loads(line)["decision"]["entityId"] for line in lines} == {"light.room_1"}

    assert roost(stack, "tail", "-n", "3") == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == [
        "#42",
        "#43",
        "#44",
    ]

    target = decision(4).decision_id
    assert roost(stack, "show", target, "--pubkey", vkey) == 0
    out = capsys.readouterr().out
    assert "co2_ppm" in out
    assert "included in the log of 45 entries (signed by roost.local/hub/cli)" in out

    assert roost(stack, "redact", target, "--reason", "erasure request 17") == 0
    assert "log entry #45" in capsys.readouterr().out
    assert roost(stack, "show", target, "--pubkey", vkey) == 0
    out = capsys.readouterr().out
    assert "[redacted]" in out
    assert "co2_ppm" not in out

    bundle = tmp_path / "export.jsonl"
    assert roost(stack, "export", str(bundle), "--previous", str(old)) == 0
    capsys.readouterr()
    assert roost(stack, "verify", str(bundle), "--pubkey", vkey, "--previous", str(old)) == 0
    out = capsys.readouterr().out
    assert "OK: 46 entries" in out
    assert "(the complete log)" in out
    assert "1 entries have redacted inputs" in out
    assert "consistent with your earlier checkpoint of 30 entries" in out

    # A checkpoint held from after the export: the CLI names both sizes and both
    # readings (an old export, or a log rolled back below the held checkpoint).
    append(stack, [decision(i) for i in range(45, 50)])
    newer = tmp_path / "newer.note"
    assert roost(stack, "checkpoint", "--out", str(newer)) == 0
    capsys.readouterr()
    assert roost(stack, "verify", str(bundle), "--pubkey", vkey, "--previous", str(newer)) == 1
    err = capsys.readouterr().err
    assert "has tree size 51, larger than the bundle's 46" in err
    assert "export again" in err
    assert "rolled back or forked below tree size 51" in err

    # An entity's export verifies on its own too.
    part = tmp_path / "part.jsonl"
    assert roost(stack, "export", str(part), "--entity", "light.room_2") == 0
    assert roost(stack, "verify", str(part), "--pubkey", vkey) == 0
    assert "OK: 15 entries" in capsys.readouterr().out

    # One flipped byte in one record: the offline check fails and says where.
    lines = bundle.read_text().splitlines(keepends=True)
    entry = json.loads(lines[5])
    proof = entry["proof"].split("\n")
    extra = proof[1].removeprefix("extra ")
    proof[1] = "extra " + ("B" if extra[10] != "B" else "C").join([extra[:10], extra[11:]])
    entry["proof"] = "\n".join(proof)
    lines[5] = json.dumps(entry) + "\n"
    bundle.write_text("".join(lines))
    assert roost(stack, "verify", str(bundle), "--pubkey", vkey) == 1
    assert "FAILED" in capsys.readouterr().err


def test_a_provably_complete_range_filtered_by_the_auditor(
    stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The typical audit: export a logged_at range unfiltered, verify it complete, filter
    it locally; a dropped line is named, and a hub-filtered export proves membership
    only."""
    vkey = str(stack.home / "data" / "audit" / "checkpoint.vkey")
    append(stack, [decision(i, entity_id=f"lock.door_{i % 2}") for i in range(100, 110)])
    since = datetime.now(UTC)
    append(stack, [decision(i, entity_id=f"lock.door_{i % 2}") for i in range(110, 124)])
    bundle = tmp_path / "range.jsonl"
    assert roost(stack, "export", str(bundle), "--since", since.isoformat()) == 0
    capsys.readouterr()
    args = ("verify", str(bundle), "--pubkey", vkey)
    assert roost(stack, *args, "--filter", "entity=lock.door_1", "--filter", "action=publish") == 0
    out = capsys.readouterr().out
    assert "OK: 14 entries" in out
    assert "(every entry of the range: none was left out)" in out
    assert "7 verified entries match entity=lock.door_1 action=publish:" in out
    listed = [line for line in out.splitlines() if line.startswith("#")]
    assert len(listed) == 7
    assert all("lock.door_1" in line for line in listed)

    lines = bundle.read_text().splitlines(keepends=True)
    first = TlogProof.parse(json.loads(lines[1])["proof"]).index
    dropped = lines[:4] + lines[5:-1] + [json.dumps({"end": True, "entries": 13}) + "\n"]
    bundle.write_text("".join(dropped))
    assert roost(stack, *args) == 1
    index = first + 3
    assert f"entries {index}..{index} of the range are missing" in capsys.readouterr().err

    served = tmp_path / "served.jsonl"
    assert (
        roost(stack, "export", str(served), "--since", since.isoformat(), "--entity", "lock.door_1")
        == 0
    )
    assert "proves membership only" in capsys.readouterr().err
    assert roost(stack, "verify", str(served), "--pubkey", vkey) == 0
    assert "proves membership only, NOT completeness" in capsys.readouterr().out
    assert roost(stack, *args, "--filter", "colour=red") == 2
    assert "KEY one of entity, model, action" in capsys.readouterr().err


def test_clear_errors_without_a_stack_or_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--home", str(tmp_path), "audit", "tail"]) == 2
    assert "no running stack" in capsys.readouterr().err
    bundle = tmp_path / "b.jsonl"
    bundle.write_text("{}\n")
    assert main(["--home", str(tmp_path), "audit", "verify", str(bundle)]) == 2
    assert "--pubkey" in capsys.readouterr().err


def test_the_hubs_own_key_is_trusted_only_out_loud(
    stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    append(stack, [decision(i) for i in range(200, 203)])
    target = decision(200).decision_id
    bundle = tmp_path / "all.jsonl"
    assert roost(stack, "export", str(bundle)) == 0
    capsys.readouterr()
    # The local stack's key is right there, but neither command takes it silently.
    for args in (("verify", str(bundle)), ("show", target)):
        assert roost(stack, *args) == 2
        err = capsys.readouterr().err
        assert "--pubkey" in err
        assert "--trust-local-key" in err
        assert roost(stack, *args, "--trust-local-key") == 0
        captured = capsys.readouterr()
        assert "trusting the hub's own key" in captured.err
        assert "checkpoint.vkey" in captured.err
    assert "with the hub's own key" in captured.out


def test_redact_honours_role_and_errors_name_the_cli_flags(
    stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    append(stack, [decision(300)])
    target = decision(300).decision_id
    args = ("redact", target, "--reason", "erasure request 18")
    assert main(["--home", str(stack.home), "audit", "--role", "auditor", *args]) == 2
    assert "PERMISSION_DENIED" in capsys.readouterr().err
    assert roost(stack, *args) == 0  # admin by default
    capsys.readouterr()
    # A checkpoint "from the future" (another log's, say): the error names --previous.
    future = tmp_path / "future.note"
    future.write_text(f"roost.local/hub/cli\n{10**9}\n{'A' * 43}=\n\n— roost.local/hub/cli x\n")
    assert roost(stack, "export", str(tmp_path / "x.jsonl"), "--previous", str(future)) == 2
    err = capsys.readouterr().err
    assert "--previous" in err
    assert "consistency_from_sizes" not in err
