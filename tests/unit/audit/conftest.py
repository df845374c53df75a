"""Fixtures of the audit unit tests: a signer, a database path, and the shared test log
with its whole-log bundle (helpers are in tests/support/audit_bundles.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.audit.checkpoint import NoteSigner
from services.audit.store import AuditStore
from tests.support.audit_bundles import ORIGIN, Lines, export, new_store, sign


@pytest.fixture(scope="module")
def signer() -> NoteSigner:
    """The hub's checkpoint signer (origin ``roost.local/hub/hub-test``)."""
    return NoteSigner.generate(ORIGIN)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """Where a test's own audit database goes (not created yet)."""
    return tmp_path / "audit" / "audit.db"


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuditStore]:
    """The test log (``tests.support.audit_bundles.logged``), shared by the module: tests
    must not write to it."""
    s = new_store(tmp_path_factory.mktemp("bundle") / "audit.db")
    yield s
    s.close()


@pytest.fixture(scope="module")
def lines(shared_store: AuditStore, signer: NoteSigner) -> Lines:
    """The whole test log's bundle; tests edit copies."""
    return export(shared_store, sign(shared_store, signer))


@pytest.fixture
def store(db: Path) -> Iterator[AuditStore]:
    """A new, empty audit store of the test's own."""
    s = AuditStore.open(db)
    yield s
    s.close()
