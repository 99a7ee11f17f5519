"""One transaction of the reference backend: every query the job operations make.

``Transaction`` holds them in SQL both engines run (``?`` parameters; ``_postgres``
adapts them), over a connection ``Store`` lends it. A job is read as a ``StoredJob``
(its protocol JSON document plus the columns around it) and an eta key's statistics as
an ``EtaRow``. For ``POST /v1/events`` a transaction can read a batch's jobs and keys
ahead (``prefetch``) and hold its writes back to run them many at a time
(``defer_writes``), without any statement seeing other than it would have.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from seenn.server._json import dumps, dumps_sorted, loads

# The statuses that end a job; a finished child no longer moves its parent.
FINISHED = ("completed", "failed", "cancelled")

IDEMPOTENCY_TTL = 24 * 3600.0


def canonical_hash(value: object) -> str:
    """Hash a JSON value independently of key order."""
    return hashlib.sha256(dumps_sorted(value).encode("utf-8")).hexdigest()


class Cursor(Protocol):
    """What a query answers, in both engines (a DB-API cursor)."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Connection(Protocol):
    """A database connection as ``Transaction`` uses it: SQL with ``?`` parameters."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Cursor: ...

    def executemany(self, sql: str, parameters: Any, /) -> Cursor: ...


# Not frozen, though never changed after it is made: a frozen dataclass's __init__
# costs four times as much, and a batch of events makes one of these per event.
@dataclass(slots=True)
class StoredJob:
    """A job row: its document and the columns around it (read-only by convention)."""

    seq: int
    data: dict[str, Any]
    start_hash: str
    expires_at: float
    parent_id: str | None = None
    aggregate: dict[str, Any] | None = None
    idle_since: float | None = None
    stale_after: float | None = None
    eta: str | None = None  # the job's ETA state as stored (JSON), parsed by _eta


@dataclass(frozen=True, slots=True)
class EtaRow:
    """The statistics of one eta key (durations in seconds, times as timestamps)."""

    eta_key: str
    count: int
    total: float
    min: float
    max: float
    p50: float
    p95: float
    confidence: float
    last_updated: float
    detail: str  # JSON: {"stages": ..., "history": ...}
    window: str = ""  # JSON: the recent samples; read only where asked for


# Ids per IN (...) list: well under SQLite's oldest limit of 999 parameters.
IN_CHUNK = 500
# The columns a StoredJob is read from, in the order of its fields.
_JOB_COLUMNS = ("seq, data, start_hash, expires_at, parent_id, aggregate, idle_since, "
                "stale_after, eta")
_ETA_COLUMNS = "eta_key, count, total, min, max, p50, p95, confidence, last_updated, detail"


def _stored(row: Any) -> StoredJob:
    return StoredJob(row[0], loads(row[1]), row[2], row[3], row[4],
                     None if row[5] is None else loads(row[5]), row[6], row[7], row[8])


def _idle_since(job: dict[str, Any], now: float) -> float | None:
    """When a job's stale clock started: the time of this write if it is running, else None.

    A declared parent (``childProgressMode``) follows its children, which have stale
    limits of their own, so its clock never runs: it may rightly wait for children
    still queued.
    """
    if job.get("status") != "running" or job.get("childProgressMode") is not None:
        return None
    return now


def _last_write(job: dict[str, Any]) -> float:
    """The ``updatedAt`` of a job document as a timestamp (now if it cannot be read)."""
    try:
        text = str(job.get("updatedAt")).replace("Z", "+00:00")
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return time.time()


def _own_limit(job: dict[str, Any]) -> float | None:
    limit = job.get("staleAfterSeconds")
    return None if limit is None else float(limit)


class Transaction:
    """Reads and writes inside one ``BEGIN IMMEDIATE`` transaction (or a plain read)."""

    def __init__(self, conn: Connection, app_id: str, now: float,
                 lock: Callable[[str], None] | None = None) -> None:
        self._conn = conn
        self.app_id = app_id
        self.now = now
        # An engine whose writers do not exclude each other (PostgreSQL) locks what a
        # write transaction reads before it reads it: a job, an idempotency key, the
        # statistics of an eta key. SQLite's BEGIN IMMEDIATE already serialises writers.
        self._lock = lock
        # The ids of the jobs this transaction wrote: told to Store.on_commit afterwards.
        self.changed: set[str] = set()
        # The detail column of each eta key read so far: a batch of progress events of
        # one job type reads it once. Dropped where this transaction writes the key.
        self._eta_details: dict[str, str | None] = {}
        # The JSON of the job documents this transaction wrote, by object: an answer
        # stored for Idempotency-Key replay is the document just written.
        self._texts: dict[int, tuple[object, str]] = {}
        # What prefetch() read ahead for a batch: each entry answers one get() or
        # idempotent() and is dropped when this transaction writes the row, so the
        # rows read ahead are always as stored (savepoints roll back only writes).
        self._jobs_ahead: dict[str, StoredJob | None] = {}
        self._keys_ahead: dict[str, tuple[str, int, str] | None] = {}
        # Writes held back by defer_writes(), by statement, each in order, and the rows
        # they write; None: every write runs at once.
        self._deferred: dict[str, list[tuple[Any, ...]]] | None = None
        self._deferred_rows: set[str] = set()
        self._raw = conn

    def defer_writes(self) -> None:
        """Hold back job updates and idempotency records, to run them many at a time.

        A batch's writes then run as one ``executemany`` per statement (on PostgreSQL,
        one round trip for all of them). Any other statement of this transaction, a
        read included, runs the held writes first, and so does a second write of the
        same row, so every statement sees exactly what it would have seen; ``flush``
        runs what is left, and ``Store.write`` flushes before it commits. A failing
        held write raises where it runs, so a caller that defers must be able to run
        its whole transaction again without deferring (``POST /v1/events`` does).
        """
        if self._deferred is None:
            self._deferred = {}
            self._conn = _Flushing(self)

    def flush(self) -> None:
        """Run the writes ``defer_writes`` held back."""
        deferred = self._deferred
        if not deferred:
            return
        self._deferred = {}
        self._deferred_rows.clear()
        for sql, rows in deferred.items():
            self._raw.executemany(sql, rows)

    def _write(self, row: str, sql: str, parameters: tuple[Any, ...]) -> None:
        deferred = self._deferred
        if deferred is None:
            self._raw.execute(sql, parameters)
            return
        if row in self._deferred_rows:
            self.flush()  # two writes of one row keep their order
        self._deferred_rows.add(row)
        deferred.setdefault(sql, []).append(parameters)

    def prefetch(self, job_ids: Collection[str], keys: Collection[str]) -> None:
        """Read the jobs and idempotency keys a batch of writes will ask for, in a few queries.

        Where writers do not exclude each other (PostgreSQL) the names are locked first,
        all at once (an engine's lock function may offer ``many``; without it, nothing
        is read ahead).
        """
        if self._lock is not None:
            lock_many = getattr(self._lock, "many", None)
            if lock_many is None:
                return
            lock_many([*("j:" + job_id for job_id in job_ids), *("i:" + key for key in keys)])
        if job_ids:
            found = self.get_many(job_ids)
            self._jobs_ahead.update((job_id, found.get(job_id)) for job_id in job_ids)
        if keys:
            ahead = self._keys_ahead
            wanted = list(dict.fromkeys(keys))
            for key in wanted:
                ahead[key] = None
            for start in range(0, len(wanted), IN_CHUNK):
                chunk = wanted[start:start + IN_CHUNK]
                marks = ", ".join("?" * len(chunk))
                for key, request_hash, status, body in self._conn.execute(
                        "SELECT key, request_hash, status, body FROM idempotency "
                        f"WHERE app_id = ? AND created_at > ? AND key IN ({marks})",
                        (self.app_id, self.now - IDEMPOTENCY_TTL, *chunk)).fetchall():
                    ahead[key] = (request_hash, status, body)

    def _dumped_now(self, job: dict[str, Any]) -> str:
        text = _dump(job)
        self._texts[id(job)] = (job, text)
        return text

    def dumped(self, value: object) -> str:
        """``value`` as JSON: the text written if it is a job document this transaction
        wrote (the same object: the job operations answer the document they store,
        unchanged after), else encoded now."""
        found = self._texts.get(id(value))
        if found is not None and found[0] is value:
            return found[1]
        return _dump(value)

    def get(self, job_id: str) -> StoredJob | None:
        """The live (unexpired) job with this id in this app."""
        if job_id in self._jobs_ahead:
            return self._jobs_ahead.pop(job_id)
        if self._lock is not None:
            self._lock("j:" + job_id)
        row = self._conn.execute(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE app_id = ? AND id = ? AND expires_at > ?",
            (self.app_id, job_id, self.now)).fetchone()
        return None if row is None else _stored(row)

    def get_many(self, job_ids: Collection[str]) -> dict[str, StoredJob]:
        """The live jobs of this app among ``job_ids`` (at most a few hundred), by id."""
        found: dict[str, StoredJob] = {}
        ids = list(dict.fromkeys(job_ids))
        for start in range(0, len(ids), IN_CHUNK):
            chunk = ids[start:start + IN_CHUNK]
            marks = ", ".join("?" * len(chunk))
            rows = self._conn.execute(
                f"SELECT {_JOB_COLUMNS}, id FROM jobs WHERE app_id = ? AND expires_at > ? "
                f"AND id IN ({marks})", (self.app_id, self.now, *chunk)).fetchall()
            for row in rows:
                found[str(row[-1])] = _stored(row)
        return found

    def insert(self, job: dict[str, Any], *, start_hash: str, expires_at: float,
               eta: str | None = None) -> None:
        """Store a new job (with its ETA state); any expired row with the same id is replaced."""
        self.changed.add(job["id"])
        self._jobs_ahead.pop(job["id"], None)
        self._conn.execute("DELETE FROM jobs WHERE app_id = ? AND id = ?",
                           (self.app_id, job["id"]))
        parent = job.get("parent") or {}
        self._conn.execute(
            "INSERT INTO jobs (app_id, id, user_id, parent_id, child_index, start_hash, "
            "expires_at, data, finished, idle_since, stale_after, eta) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (self.app_id, job["id"], job["userId"], parent.get("parentJobId"),
             parent.get("childIndex"), start_hash, expires_at, self._dumped_now(job),
             job.get("status") in FINISHED, _idle_since(job, self.now), _own_limit(job), eta))
        self.changed.add(job["id"])

    def update(self, job: dict[str, Any], *, seq: int,
               aggregate: dict[str, Any] | None = None, eta: str | None = None) -> None:
        """Save a changed job document, and a parent's aggregate or the ETA state when given.

        Every update is a write to the job: a running job's stale clock starts again.
        ``seq`` is the row's, as read in this transaction (``StoredJob.seq``): the row
        is found by its rowid rather than through the index of app and id.
        """
        self.changed.add(job["id"])
        self._jobs_ahead.pop(job["id"], None)
        # A job never leaves a finished status, so an unfinished one was stored
        # unfinished: leaving the column out spares the write an index entry.
        sql = "UPDATE jobs SET data = ?, idle_since = ?, stale_after = ?"
        parameters: tuple[Any, ...] = (self._dumped_now(job), _idle_since(job, self.now),
                                       _own_limit(job))
        if job.get("status") in FINISHED:
            sql += ", finished = 1"
        if aggregate is not None:
            sql += ", aggregate = ?"
            parameters += (_dump(aggregate),)
        if eta is not None:
            sql += ", eta = ?"
            parameters += (eta,)
        self._write("j:" + job["id"], sql + " WHERE seq = ?", (*parameters, seq))

    # ETA statistics -------------------------------------------------------------------

    def eta_detail(self, eta_key: str) -> str | None:
        """The ``detail`` column of an eta key (its history and stages), if it has statistics."""
        if eta_key in self._eta_details:
            return self._eta_details[eta_key]
        row = self._conn.execute(
            "SELECT detail FROM eta_stats WHERE app_id = ? AND eta_key = ?",
            (self.app_id, eta_key)).fetchone()
        detail = self._eta_details[eta_key] = None if row is None else str(row[0])
        return detail

    def eta_row(self, eta_key: str, *, window: bool = False) -> EtaRow | None:
        """The statistics of an eta key; with ``window``, its recent samples too.

        With ``window`` the caller is about to write them back: a write transaction
        locks them first.
        """
        if window and self._lock is not None:
            self._lock("e:" + eta_key)
        columns = _ETA_COLUMNS + (', "window"' if window else "")
        row = self._conn.execute(
            f"SELECT {columns} FROM eta_stats WHERE app_id = ? AND eta_key = ?",
            (self.app_id, eta_key)).fetchone()
        return None if row is None else EtaRow(*row)

    def eta_rows(self, limit: int) -> list[EtaRow]:
        """Up to ``limit`` eta keys of the app, the most recently updated first."""
        rows = self._conn.execute(
            f"SELECT {_ETA_COLUMNS} FROM eta_stats WHERE app_id = ? "
            "ORDER BY last_updated DESC, eta_key LIMIT ?", (self.app_id, limit)).fetchall()
        return [EtaRow(*row) for row in rows]

    def put_eta_row(self, row: EtaRow) -> None:
        """Store the statistics of an eta key, replacing any before them."""
        self._eta_details.pop(row.eta_key, None)
        self._conn.execute(
            "INSERT INTO eta_stats (app_id, eta_key, count, total, min, max, p50, "
            'p95, confidence, last_updated, detail, "window") '
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (app_id, eta_key) DO UPDATE "
            "SET count = excluded.count, total = excluded.total, min = excluded.min, "
            "max = excluded.max, p50 = excluded.p50, p95 = excluded.p95, "
            "confidence = excluded.confidence, last_updated = excluded.last_updated, "
            'detail = excluded.detail, "window" = excluded."window"',
            (self.app_id, row.eta_key, row.count, row.total, row.min, row.max, row.p50,
             row.p95, row.confidence, row.last_updated, row.detail, row.window))

    def delete_eta_row(self, eta_key: str) -> bool:
        """Remove the statistics of an eta key; whether there were any."""
        self._eta_details.pop(eta_key, None)
        deleted: int = self._conn.execute(
            "DELETE FROM eta_stats WHERE app_id = ? AND eta_key = ?",
            (self.app_id, eta_key)).rowcount
        return deleted > 0

    def children(self, parent_id: str) -> list[tuple[dict[str, Any], float]]:
        """Every live child of a parent with its expiry, in child-index order.

        This reads all of them: the job operations use it only to build a parent's
        aggregate from scratch, never on the path of an ordinary child change.
        """
        rows = self._conn.execute(
            "SELECT data, expires_at FROM jobs WHERE app_id = ? AND parent_id = ? "
            "AND expires_at > ? ORDER BY child_index",
            (self.app_id, parent_id, self.now)).fetchall()
        return [(loads(row[0]), row[1]) for row in rows]

    def children_page(self, parent_id: str, *, after_index: int | None, limit: int,
                      user_id: str | None = None) -> list[StoredJob]:
        """Up to ``limit`` live children after ``after_index``, in child-index order.

        With ``user_id``, only that user's children.
        """
        sql = (f"SELECT {_JOB_COLUMNS} FROM jobs WHERE app_id = ? AND parent_id = ? "
               "AND child_index > ? AND expires_at > ?")
        args: list[Any] = [self.app_id, parent_id, -1 if after_index is None else after_index,
                           self.now]
        if user_id is not None:
            sql += " AND user_id = ?"
            args.append(user_id)
        rows = self._conn.execute(sql + " ORDER BY child_index LIMIT ?",
                                  (*args, limit)).fetchall()
        return [_stored(row) for row in rows]

    def last_child_index(self, parent_id: str) -> int | None:
        """The highest child index among a parent's live children (``None`` if none)."""
        row = self._conn.execute(
            "SELECT child_index FROM jobs WHERE app_id = ? AND parent_id = ? "
            "AND expires_at > ? ORDER BY child_index DESC LIMIT 1",
            (self.app_id, parent_id, self.now)).fetchone()
        return None if row is None else int(row[0])

    def first_open_child(self, parent_id: str) -> dict[str, Any] | None:
        """The live, unfinished child of a parent with the lowest child index."""
        row = self._conn.execute(
            "SELECT data FROM jobs WHERE app_id = ? AND parent_id = ? AND finished = 0 "
            "AND expires_at > ? ORDER BY child_index LIMIT 1",
            (self.app_id, parent_id, self.now)).fetchone()
        return None if row is None else dict(loads(row[0]))

    def has_children(self, parent_id: str) -> bool:
        """Whether any live job names ``parent_id`` as its parent."""
        row = self._conn.execute(
            "SELECT 1 FROM jobs WHERE app_id = ? AND parent_id = ? AND expires_at > ? LIMIT 1",
            (self.app_id, parent_id, self.now)).fetchone()
        return row is not None

    def child_index_taken(self, parent_id: str, child_index: int) -> bool:
        """Whether a live child of the parent already has this index."""
        row = self._conn.execute(
            "SELECT 1 FROM jobs WHERE app_id = ? AND parent_id = ? AND child_index = ? "
            "AND expires_at > ?", (self.app_id, parent_id, child_index, self.now)).fetchone()
        return row is not None

    def list_user(self, user_id: str, *, before_seq: int | None,
                  limit: int) -> list[StoredJob]:
        """Up to ``limit`` live jobs of a user, newest first, older than ``before_seq``."""
        rows = self._conn.execute(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE app_id = ? AND user_id = ? AND seq < ? "
            "AND expires_at > ? ORDER BY seq DESC LIMIT ?",
            (self.app_id, user_id, before_seq if before_seq is not None else 2 ** 62,
             self.now, limit)).fetchall()
        return [_stored(row) for row in rows]

    def recent(self, *, before_seq: int | None, limit: int,
               user_id: str | None = None) -> list[StoredJob]:
        """Up to ``limit`` live jobs of the app (of one user if given), newest first."""
        sql = f"SELECT {_JOB_COLUMNS} FROM jobs WHERE app_id = ? AND seq < ? AND expires_at > ?"
        params: list[Any] = [self.app_id, before_seq if before_seq is not None else 2 ** 62,
                             self.now]
        if user_id is not None:
            sql += " AND user_id = ?"
            params.append(user_id)
        rows = self._conn.execute(sql + " ORDER BY seq DESC LIMIT ?",
                                  (*params, limit)).fetchall()
        return [_stored(row) for row in rows]

    def idempotent(self, key: str) -> tuple[str, int, str] | None:
        """The stored (request hash, status, body) of an earlier call with this key."""
        if key in self._keys_ahead:
            return self._keys_ahead.pop(key)
        if self._lock is not None:
            self._lock("i:" + key)
        row = self._conn.execute(
            "SELECT request_hash, status, body FROM idempotency WHERE app_id = ? AND key = ? "
            "AND created_at > ?", (self.app_id, key, self.now - IDEMPOTENCY_TTL)).fetchone()
        return (row[0], row[1], row[2]) if row else None

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """A nested part of the transaction, undone alone if its block raises.

        ``POST /v1/events`` runs each event in one, so a failure inside the server on
        one event leaves the others of the batch standing.
        """
        outer = self._lock
        taken: list[str] = []
        if outer is not None:
            def lock(name: str) -> None:
                taken.append(name)
                outer(name)

            self._lock = lock
        self._conn.execute("SAVEPOINT seenn_event")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK TO SAVEPOINT seenn_event")
            self._conn.execute("RELEASE SAVEPOINT seenn_event")
            self._eta_details.clear()  # what it read may have been written and undone
            # PostgreSQL releases the locks first taken after the savepoint with it.
            forget = getattr(outer, "forget", None)
            if forget is not None:
                forget(taken)
            raise
        finally:
            self._lock = outer
        self._conn.execute("RELEASE SAVEPOINT seenn_event")

    def remember(self, key: str, request_hash: str, status: int, body: str) -> None:
        """Store the answer of a call made with an idempotency key."""
        self._keys_ahead.pop(key, None)
        self._write("i:" + key, _REMEMBER,
                    (self.app_id, key, request_hash, status, body, self.now))


_REMEMBER = ("INSERT INTO idempotency (app_id, key, request_hash, status, body, created_at) "
             "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (app_id, key) DO UPDATE SET "
             "request_hash = excluded.request_hash, status = excluded.status, "
             "body = excluded.body, created_at = excluded.created_at")


class _Flushing:
    """A transaction's connection while its writes are deferred: runs them first."""

    def __init__(self, tx: Transaction) -> None:
        self._tx = tx

    def execute(self, sql: str, parameters: Any = (), /) -> Cursor:
        self._tx.flush()
        return self._tx._raw.execute(sql, parameters)

    def executemany(self, sql: str, parameters: Any, /) -> Cursor:
        self._tx.flush()
        return self._tx._raw.executemany(sql, parameters)


_dump = dumps
