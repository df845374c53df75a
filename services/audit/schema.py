"""The audit database's tables and their migrations (versioned with ``PRAGMA user_version``).

Schema v1:

* ``entries``: one row per leaf. ``idx`` is the RFC 9162 leaf index, dense from 0;
  ``record``/``leaf_hash`` are immutable (triggers forbid UPDATE and DELETE). The other
  columns are denormalized from the record for queries.
* ``inputs``: the redactable side store, keyed by the same ``idx``; redaction nulls
  ``data`` and sets ``redacted_at_us`` without touching the leaf.

Schema v2 adds the Merkle tree (see ``services.audit.tree``): ``tree_nodes``,
``tree_state`` and ``checkpoints``, backfilled from ``entries.leaf_hash`` in ``idx``
order on upgrade.

Schema v3 adds ``inputs.erased_by``: the leaf index of the log entry that erased the
inputs (a redaction or a retention run, see ``services.audit.erasure``).

Schema v4 stores only tree nodes of 16 leaves and up (see ``services.audit.tree``).

Schema v5 adds ``entries.logged_at_us``: the ``logged_at`` the log put in the record,
non-decreasing in ``idx`` order (so time ranges are found by binary search over
``idx``, without an index); 0 for entries logged before v5, whose records lack it.
"""

from __future__ import annotations

import sqlite3
from typing import Final

from services.audit import tree
from services.kit import sqlite as kit_sqlite

__all__ = ["ENTRY_COLUMNS", "INPUT_COLUMNS", "SCHEMA_VERSION", "migrate"]

# One tuple of steps per schema version; index i migrates version i -> i + 1. A step
# is an SQL statement or a function run on the connection inside the transaction.

_MIGRATIONS: Final[tuple[tuple[kit_sqlite.Step, ...], ...]] = (
    (
        """CREATE TABLE entries (
            idx INTEGER PRIMARY KEY,
            decision_id TEXT NOT NULL UNIQUE,
            decided_at_us INTEGER NOT NULL,
            entity_id TEXT,
            model_name TEXT,
            model_version TEXT,
            action TEXT,
            record BLOB NOT NULL,
            leaf_hash BLOB NOT NULL,
            appended_at_us INTEGER NOT NULL
        )""",
        """CREATE TABLE inputs (
            idx INTEGER PRIMARY KEY REFERENCES entries(idx),
            data BLOB,
            redacted_at_us INTEGER
        )""",
        "CREATE INDEX entries_decided_at ON entries(decided_at_us)",
        "CREATE INDEX entries_entity ON entries(entity_id)",
        "CREATE INDEX entries_model ON entries(model_name, model_version)",
        "CREATE INDEX entries_action ON entries(action)",
        """CREATE TRIGGER entries_no_update BEFORE UPDATE ON entries
            BEGIN SELECT RAISE(ABORT, 'audit entries are append-only'); END""",
        """CREATE TRIGGER entries_no_delete BEFORE DELETE ON entries
            BEGIN SELECT RAISE(ABORT, 'audit entries are append-only'); END""",
    ),
    (*tree.TREE_SCHEMA, tree.backfill),
    (
        # The log entry (leaf index) that erased these inputs: a redaction or a
        # retention run (see services.audit.erasure).
        "ALTER TABLE inputs ADD COLUMN erased_by INTEGER",
        "CREATE INDEX checkpoints_created ON checkpoints(created_at_us)",
        # Model and action have few distinct values: their indexes cost every append
        # more than they save a query (which scans in leaf order and stops at a page).
        "DROP INDEX IF EXISTS entries_model",
        "DROP INDEX IF EXISTS entries_action",
    ),
    (
        # Subtrees of fewer than 16 leaves are recomputed from the leaves on demand.
        "DELETE FROM tree_nodes WHERE level < 4",  # tree.STORED_MIN_LEVEL
    ),
    (
        # Decision.logged_at of the record; 0 for older records, which lack it.
        "ALTER TABLE entries ADD COLUMN logged_at_us INTEGER NOT NULL DEFAULT 0",
    ),
)
SCHEMA_VERSION: Final = len(_MIGRATIONS)

# Columns of an ``entries`` row as the store inserts it (leaf hash is column 8).
ENTRY_COLUMNS: Final = (
    "idx, decision_id, decided_at_us, entity_id, model_name, model_version, action,"
    " record, leaf_hash, appended_at_us, logged_at_us"
)
# Columns of an ``inputs`` row as the store inserts it.
INPUT_COLUMNS: Final = "idx, data"


def migrate(conn: sqlite3.Connection) -> int:
    """Brings the schema to SCHEMA_VERSION, one transaction per version; returns it."""
    return kit_sqlite.migrate(conn, _MIGRATIONS, what="audit database")
