"""The local example store: a household's labelled examples, on the hub and nowhere else.

Every row is one labelled model input: a homeowner's correction of a logged decision
(``feedback``/``override``), a reading labelled by a sensor the homeowner designated as
ground truth (``sensor``) or an import from Home Assistant history (``import``). These are
the household's most private data (when someone was home, what they did), so:

* they live in one SQLite file in the service's data directory (WAL, ``synchronous=FULL``)
  and are read only by the fine-tuning job, which uses them under differential privacy;
* nothing here logs an input value or a label (only model names and counts), and no
  value or label ever becomes a metric label;
* rows older than the retention period are deleted (:meth:`ExampleStore.prune`): what
  is not kept cannot leak;
* an example's id is ``HMAC-SHA256(store key, model | shape | input | label | time)``.
  It deduplicates exactly like a plain SHA-256 of those fields would, but the key is a
  random secret of this store, so an id that leaves the hub (it is returned to the
  caller) cannot be used to confirm a guess of the low-entropy sensor values behind it.

Inputs are stored as float32 little-endian bytes with their shape; :meth:`load` returns
them as ``(x, y)`` numpy arrays with ``y`` indexing the model's output labels.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

from services.kit import sqlite as kit_sqlite
from services.kit.clock import to_us
from services.kit.errors import InvalidArgument, Unavailable

logger = logging.getLogger(__name__)

Source = Literal["feedback", "override", "sensor", "import"]
SOURCES: Final[tuple[str, ...]] = ("feedback", "override", "sensor", "import")
_MAX_LABEL_CHARS: Final = 200
_MAX_SQL_INT: Final = 2**63 - 1
_US_PER_DAY: Final = 86_400_000_000

_SCHEMA: Final = (
    # seq: insertion order, used to pin the rows a training job reads.
    """CREATE TABLE IF NOT EXISTS examples (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        example_id TEXT NOT NULL UNIQUE,
        model TEXT NOT NULL,
        input BLOB NOT NULL,
        shape TEXT NOT NULL,
        label TEXT NOT NULL,
        source TEXT NOT NULL,
        observed_at_us INTEGER NOT NULL,
        added_at_us INTEGER NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS examples_model_seq ON examples(model, seq)",
    "CREATE INDEX IF NOT EXISTS examples_observed ON examples(observed_at_us)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL)",
)


def _create_id_key(conn: sqlite3.Connection) -> None:
    """The store's random key for example ids (HMAC), made once with the schema."""
    conn.execute("INSERT INTO meta (key, value) VALUES ('id_key', ?)", (secrets.token_bytes(32),))


_MIGRATIONS: Final[tuple[tuple[kit_sqlite.Step, ...], ...]] = ((*_SCHEMA, _create_id_key),)
SCHEMA_VERSION: Final = len(_MIGRATIONS)

F32Array = npt.NDArray[np.float32]
I64Array = npt.NDArray[np.int64]


@dataclass(frozen=True)
class NewExample:
    """One labelled input to store (already validated against the model's schema)."""

    input: F32Array
    label: str
    source: Source
    observed_at: datetime


@dataclass(frozen=True)
class Snapshot:
    """The rows of one model a job will train on: every row with ``seq <= max_seq``."""

    model: str
    count: int
    max_seq: int


def _utc(t: datetime) -> datetime:
    if t.tzinfo is None or t.utcoffset() is None:
        raise InvalidArgument("observed_at: must be timezone-aware")
    return t.astimezone(UTC)


class ExampleStore(kit_sqlite.SharedConnection):
    """The example database. Thread-safe (one connection, one lock); one per process."""

    def __init__(self, conn: sqlite3.Connection, key: bytes) -> None:
        super().__init__(conn, what="example store")
        self._key = key

    @classmethod
    def open(cls, path: Path, *, busy_timeout_s: float = 30.0) -> ExampleStore:
        """Opens (creating) the store at ``path`` (mode 0600: household data)."""
        try:
            conn = kit_sqlite.connect_durable(
                path,
                what="example store",
                busy_timeout_s=busy_timeout_s,
                private=True,
                check_same_thread=False,
            )
        except sqlite3.OperationalError as e:
            raise Unavailable(f"example store: cannot open the database ({e})") from e
        try:
            kit_sqlite.migrate(conn, _MIGRATIONS, what="example store")
            row = conn.execute("SELECT value FROM meta WHERE key = 'id_key'").fetchone()
            return cls(conn, bytes(row[0]))
        except sqlite3.OperationalError as e:
            conn.close()
            raise Unavailable(f"example store: cannot open the database ({e})") from e
        except BaseException:
            conn.close()
            raise

    # ---- ids

    def example_id(self, model: str, example: NewExample) -> str:
        """The dedup key of ``example`` (keyed: see the module docstring)."""
        arr = np.ascontiguousarray(example.input, dtype="<f4")
        mac = hmac.new(self._key, digestmod=hashlib.sha256)
        for part in (
            model.encode(),
            json.dumps(list(arr.shape)).encode(),
            arr.tobytes(),
            example.label.encode(),
            str(to_us(_utc(example.observed_at))).encode(),
        ):
            mac.update(len(part).to_bytes(8, "big"))
            mac.update(part)
        return mac.hexdigest()

    # ---- writes

    def add(
        self, model: str, examples: Sequence[NewExample], *, now: datetime | None = None
    ) -> list[tuple[str, bool]]:
        """Stores ``examples`` of ``model`` in one transaction.

        Returns ``(example_id, added)`` per example; ``added`` is False for a duplicate
        (same model, input, label and time as a stored one, or earlier in this call).
        """
        if not model:
            raise InvalidArgument("model_name: required")
        added_at = to_us(datetime.now(UTC) if now is None else _utc(now))
        rows = []
        for i, ex in enumerate(examples):
            if ex.source not in SOURCES:
                raise InvalidArgument(f"examples[{i}].source: must be one of {', '.join(SOURCES)}")
            if not ex.label or len(ex.label) > _MAX_LABEL_CHARS:
                raise InvalidArgument(f"examples[{i}].label: required, at most 200 characters")
            arr = np.ascontiguousarray(ex.input, dtype="<f4")
            if arr.size == 0 or not np.isfinite(arr).all():
                raise InvalidArgument(f"examples[{i}].input: must be non-empty and finite")
            rows.append(
                (
                    self.example_id(model, ex),
                    model,
                    arr.tobytes(),
                    json.dumps(list(arr.shape)),
                    ex.label,
                    ex.source,
                    to_us(_utc(ex.observed_at)),
                    added_at,
                )
            )
        out: list[tuple[str, bool]] = []
        with self._transaction("IMMEDIATE") as conn:
            for row in rows:
                cur = conn.execute(
                    "INSERT OR IGNORE INTO examples (example_id, model, input, shape, label,"
                    " source, observed_at_us, added_at_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    row,
                )
                out.append((row[0], cur.rowcount == 1))
        added = sum(1 for _, new in out if new)
        logger.info("example store: %d of %d examples of %s added", added, len(out), model)
        return out

    def prune(self, before: datetime) -> int:
        """Deletes every example observed or added before ``before``; returns how many.

        Either time counts: an example stamped in the future must not outlive its
        retention on the hub (the privacy budget's window assumes it does not)."""
        cutoff = to_us(_utc(before))
        with self._transaction("IMMEDIATE") as conn:
            cur = conn.execute(
                "DELETE FROM examples WHERE observed_at_us < ? OR added_at_us < ?",
                (cutoff, cutoff),
            )
            n = cur.rowcount
        if n:
            logger.info("example store: %d examples past retention deleted", n)
        return int(n)

    # ---- reads

    def count(self, model: str) -> int:
        with self._transaction("DEFERRED") as conn:
            row = conn.execute("SELECT COUNT(*) FROM examples WHERE model = ?", (model,))
            return int(row.fetchone()[0])

    def counts(self) -> dict[str, int]:
        """Examples per model (for the metrics gauge: names and counts only)."""
        with self._transaction("DEFERRED") as conn:
            rows = conn.execute("SELECT model, COUNT(*) FROM examples GROUP BY model")
            return {str(m): int(n) for m, n in rows.fetchall()}

    def snapshot(self, model: str) -> Snapshot:
        """Pins the rows a job will read: later additions do not change its data set."""
        with self._transaction("DEFERRED") as conn:
            row = conn.execute(
                "SELECT COUNT(*), COALESCE(MAX(seq), 0) FROM examples WHERE model = ?", (model,)
            ).fetchone()
        return Snapshot(model, int(row[0]), int(row[1]))

    def day_count(self, model: str, max_seq: int) -> int:
        """Distinct UTC days of the rows of ``model`` up to ``max_seq`` (the day unit's n)."""
        with self._transaction("DEFERRED") as conn:
            row = conn.execute(
                "SELECT COUNT(DISTINCT observed_at_us / ?) FROM examples"
                " WHERE model = ? AND seq <= ? AND observed_at_us >= 0",
                (_US_PER_DAY, model, max_seq),
            ).fetchone()
            negative = conn.execute(
                "SELECT COUNT(DISTINCT (observed_at_us + 1) / ? - 1) FROM examples"
                " WHERE model = ? AND seq <= ? AND observed_at_us < 0",
                (_US_PER_DAY, model, max_seq),
            ).fetchone()
        return int(row[0]) + int(negative[0])

    def load(
        self,
        model: str,
        labels: Sequence[str],
        shape: Sequence[int],
        *,
        max_seq: int | None = None,
        since: datetime | None = None,
        sources: Sequence[Source] | None = None,
        newest: int | None = None,
    ) -> tuple[F32Array, I64Array]:
        """``(x, y)`` of ``model``: x float32 ``[n, *shape]``, y the index of each row's
        label in ``labels`` (the model's output order). Rows with another shape or a label
        the model does not have (e.g. stored for an older version) are skipped.

        ``since`` keeps rows observed at or after it, ``sources`` rows of those sources,
        ``newest`` only the last that many matching rows (by insertion order)."""
        x, y, _ = self.load_observed(
            model, labels, shape, max_seq=max_seq, since=since, sources=sources, newest=newest
        )
        return x, y

    def load_observed(
        self,
        model: str,
        labels: Sequence[str],
        shape: Sequence[int],
        *,
        max_seq: int | None = None,
        since: datetime | None = None,
        sources: Sequence[Source] | None = None,
        newest: int | None = None,
    ) -> tuple[F32Array, I64Array, I64Array]:
        """:meth:`load` plus each row's observation time (µs since the Unix epoch)."""
        index = {label: i for i, label in enumerate(labels)}
        want = json.dumps([int(d) for d in shape])
        kept = None if sources is None else frozenset(sources)
        limit = None if newest is None else max(0, int(newest))
        xs: list[bytes] = []
        ys: list[int] = []
        ts: list[int] = []
        # Newest first, so that ``newest`` stops early; reversed into insertion order below.
        query = (
            "SELECT input, shape, label, source, observed_at_us FROM examples"
            " WHERE model = ? AND seq <= ? AND observed_at_us >= ? ORDER BY seq DESC"
        )
        params = (
            model,
            _MAX_SQL_INT if max_seq is None else max_seq,
            -_MAX_SQL_INT if since is None else to_us(_utc(since)),
        )
        with self._transaction("DEFERRED") as conn:
            for blob, row_shape, label, source, observed in conn.execute(query, params):
                if limit is not None and len(xs) >= limit:
                    break
                if row_shape != want or label not in index:
                    continue
                if kept is not None and source not in kept:
                    continue
                xs.append(bytes(blob))
                ys.append(index[label])
                ts.append(int(observed))
        xs.reverse()
        ys.reverse()
        ts.reverse()
        width = int(np.prod([int(d) for d in shape])) if shape else 1
        x = np.frombuffer(b"".join(xs), dtype="<f4").astype(np.float32)
        x = x.reshape((len(xs), *[int(d) for d in shape])) if xs else x.reshape((0, width))
        return x, np.asarray(ys, dtype=np.int64), np.asarray(ts, dtype=np.int64)
