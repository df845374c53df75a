"""No forks, and witnesses, with real processes: the audit service, `roost audit witness`
(an HTTP server of its own) and the `roost audit` CLI.

* the happy path: checkpoints get cosigned, an export carries the cosignature and
  `verify --witness-key K --min-witnesses 1` accepts it (2 required: refused);
* an older copy of audit.db put back is refused at start, naming sizes and roots;
* a kill -9 between a group commit and the next checkpoint still starts;
* a hub owner who also deletes the saved checkpoint can start the forked log, but the
  witness refuses to cosign it, and verify with --min-witnesses refuses its export.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.main import main
from cli.stack import Stack, StackError
from roost.audit.v1 import audit_service_pb2 as pb
from roost.audit.v1 import audit_service_pb2_grpc as pb_grpc
from services.audit.checkpoint import NoteSigner, load_or_create_signer
from services.audit.cosignature import Cosigner
from services.audit.latest_checkpoint import FILE_NAME
from services.kit.auth import Role
from services.kit.client import sync_channel
from tests.support.audit_records import decision
from tests.support.metrics import metric
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

HUB_ID = "witnessed"


class Witness:
    """`roost audit witness` in a process of its own, on a free port."""

    def __init__(self, home: Path, log_vkey: Path) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.ready = home / "witness.ready.json"
        self.out = (home / "witness.log").open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cli.main",
                "--home",
                str(home),
                "audit",
                "witness",
                "--state",
                str(home),
                "--log",
                str(log_vkey),
                "--listen",
                "127.0.0.1:0",
                "--name",
                "witness.test/w1",
                "--ready-file",
                str(self.ready),
            ],
            stdout=self.out,
            stderr=subprocess.STDOUT,
        )
        info = wait_until(self._info, 30, "the witness to serve")
        self.url = f"http://127.0.0.1:{info['port']}"
        self.vkey: str = info["vkey"]

    def _info(self) -> dict[str, object] | None:
        assert self.proc.poll() is None, (self.ready.parent / "witness.log").read_text()
        return json.loads(self.ready.read_text()) if self.ready.is_file() else None

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(15)
        self.out.close()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def stack(home: Path) -> Iterator[Stack]:
    st = Stack(home / "hub", hub_id=HUB_ID)
    yield st
    st.stop()


@pytest.fixture
def witness(home: Path, stack: Stack) -> Iterator[Witness]:
    # The hub's checkpoint key exists before the witness is told to trust it.
    data = stack.home / "data" / "audit"
    signer = load_or_create_signer(data / "checkpoint.key", f"roost.local/hub/{HUB_ID}")
    (data / "hub.vkey").write_text(signer.vkey() + "\n")
    w = Witness(home / "witness", data / "hub.vkey")
    yield w
    w.stop()


def start_audit(stack: Stack, witness: Witness | None = None) -> None:
    # No retention run: its entries would change the sizes the tests expect.
    env = {
        "ROOST_AUDIT_CHECKPOINT_INTERVAL_SECONDS": "0.2",
        "ROOST_AUDIT_INPUTS_RETENTION_DAYS": "0",
    }
    if witness is not None:
        env["ROOST_AUDIT_WITNESSES"] = f"{witness.url} {witness.vkey}"
    stack.start_service(Role.AUDIT, env)
    stack.write_stack_file()


def append(stack: Stack, ids: range, action: str = "publish") -> int:
    with sync_channel(
        f"127.0.0.1:{stack.port_of(Role.AUDIT)}",
        certs_dir=stack.certs_dir,
        role=Role.HUB,
        server_role=Role.AUDIT,
    ) as channel:
        response = pb_grpc.AuditServiceStub(channel).AppendDecisions(
            pb.AppendDecisionsRequest(decisions=[decision(i, action=action) for i in ids]),
            timeout=10,
        )
    return int(response.tree_size)


def roost(stack: Stack, *args: str) -> int:
    return main(["--home", str(stack.home), "audit", *args])


def vkey_file(stack: Stack) -> str:
    return str(stack.home / "data" / "audit" / "checkpoint.vkey")


def test_checkpoints_are_cosigned_and_verify_requires_them(
    stack: Stack, witness: Witness, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    start_audit(stack, witness)
    append(stack, range(40))
    bundle = tmp_path / "all.jsonl"
    assert roost(stack, "export", str(bundle)) == 0
    header = json.loads(bundle.read_text().splitlines()[0])
    assert "\u2014 witness.test/w1 " in header["checkpoint"]
    witness_key = str(tmp_path / "witness" / "witness.vkey")
    capsys.readouterr()
    assert (
        roost(
            stack,
            "verify",
            str(bundle),
            "--pubkey",
            vkey_file(stack),
            "--witness-key",
            witness_key,
            "--min-witnesses",
            "1",
        )
        == 0
    )
    assert "cosigned by witnesses: witness.test/w1" in capsys.readouterr().out
    other = Cosigner.from_note_signer(NoteSigner.generate("witness.test/w2")).vkey()
    assert (
        roost(
            stack,
            "verify",
            str(bundle),
            "--pubkey",
            vkey_file(stack),
            "--witness-key",
            witness_key,
            "--witness-key",
            other,
            "--min-witnesses",
            "2",
        )
        == 1
    )
    assert "1 valid cosignature(s)" in capsys.readouterr().err
    # The log grows, the witness follows (with a consistency proof from 40).
    append(stack, range(40, 75))
    assert roost(stack, "checkpoint") == 0
    assert "\u2014 witness.test/w1 " in capsys.readouterr().out
    assert metric(stack, "roost_audit_witness_cosigned_tree_size", "audit") == 75


def test_an_older_database_is_refused_at_start(stack: Stack) -> None:
    db = stack.home / "data" / "audit"
    start_audit(stack)
    append(stack, range(10))
    assert roost(stack, "checkpoint") == 0
    stack.stop_one("audit")
    backup = stack.home / "backup"
    backup.mkdir()
    for f in db.glob("audit.db*"):
        shutil.copy(f, backup / f.name)
    start_audit(stack)
    append(stack, range(10, 30))
    assert roost(stack, "checkpoint") == 0
    stack.stop_one("audit")
    for f in db.glob("audit.db*"):
        f.unlink()
    for f in backup.iterdir():
        shutil.copy(f, db / f.name)
    with pytest.raises(StackError) as caught:
        start_audit(stack)
    message = str(caught.value)
    assert "tree has 10 entries" in message
    assert "checkpoint of 30 entries" in message


def test_a_kill_between_commit_and_checkpoint_still_starts(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    start_audit(stack)
    append(stack, range(10))
    assert roost(stack, "checkpoint") == 0
    stack.stop_one("audit")
    # A long checkpoint interval: the next appends are committed, never checkpointed.
    stack.start_service(
        Role.AUDIT,
        {
            "ROOST_AUDIT_CHECKPOINT_INTERVAL_SECONDS": "3600",
            "ROOST_AUDIT_INPUTS_RETENTION_DAYS": "0",
        },
    )
    stack.write_stack_file()
    assert append(stack, range(10, 25)) == 25
    stack.kill("audit")
    start_audit(stack)
    capsys.readouterr()
    assert roost(stack, "checkpoint") == 0
    assert capsys.readouterr().out.split("\n")[1] == "25"


def test_a_forked_log_gets_no_cosignature(
    stack: Stack, witness: Witness, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = stack.home / "data" / "audit"
    start_audit(stack, witness)
    append(stack, range(20))
    assert roost(stack, "checkpoint") == 0
    assert "witness.test/w1" in capsys.readouterr().out
    stack.stop_one("audit")
    # The hub owner rewrites history and removes the saved checkpoint beside the key.
    for f in db.glob("audit.db*"):
        f.unlink()
    (db / FILE_NAME).unlink()
    start_audit(stack, witness)
    append(stack, range(30), action="ignore")
    bundle = tmp_path / "forked.jsonl"
    assert roost(stack, "export", str(bundle)) == 0
    assert "witness.test/w1" not in json.loads(bundle.read_text().splitlines()[0])["checkpoint"]
    wait_until(
        lambda: metric(stack, "roost_audit_witness_submissions_total", "audit", outcome="refused"),
        15,
        "the witness's refusal",
    )
    witness_key = str(tmp_path / "witness" / "witness.vkey")
    capsys.readouterr()
    assert (
        roost(
            stack,
            "verify",
            str(bundle),
            "--pubkey",
            vkey_file(stack),
            "--witness-key",
            witness_key,
            "--min-witnesses",
            "1",
        )
        == 1
    )
    assert "0 valid cosignature(s)" in capsys.readouterr().err
