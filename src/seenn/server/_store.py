"""Storage of the reference backend, whatever the engine: apps (key pairs), jobs, idempotency.

``Transaction`` (``_transaction``) holds every query the job operations make, in SQL
both engines run (``?`` parameters; ``_postgres`` adapts them); ``Store`` holds transactions, apps,
the stale sweep and the purge, over an engine's connection, begin and lock
(``_sqlite``: one writer at a time; ``_postgres``: advisory locks per job).
A job is stored as its protocol JSON document plus the columns that queries
and the TTL need; a parent also keeps the running sums of its children
(``aggregate``) so that a child's change updates it without reading the siblings.
A running job also keeps when it was last written (``idle_since``) and its own stale
limit, indexed so that finding the jobs whose worker went silent reads only those,
and what its ETA needs (``eta``, see ``_eta``). ``eta_stats`` holds, per app and eta
key, the statistics of completed jobs: all-time sums, the figures of the recent
window, the answer's ``history`` and ``stages`` (``detail``, which a progress write
reads) and the window itself (read only when a job completes).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from seenn.server._transaction import IDEMPOTENCY_TTL, IN_CHUNK, Connection, Transaction

T = TypeVar("T")

# The indexes of both engines (SQLite adds them after the columns _sqlite's migration
# gives an older database).
INDEXES = """
CREATE INDEX IF NOT EXISTS jobs_by_user ON jobs (app_id, user_id, seq);
CREATE INDEX IF NOT EXISTS jobs_by_parent ON jobs (app_id, parent_id, child_index);
CREATE INDEX IF NOT EXISTS jobs_open_children ON jobs (app_id, parent_id, finished, child_index);
CREATE INDEX IF NOT EXISTS jobs_by_expiry ON jobs (expires_at);
CREATE INDEX IF NOT EXISTS jobs_idle ON jobs (idle_since)
    WHERE idle_since IS NOT NULL AND stale_after IS NULL;
CREATE INDEX IF NOT EXISTS jobs_idle_own_limit ON jobs ((idle_since + stale_after))
    WHERE idle_since IS NOT NULL AND stale_after IS NOT NULL;
CREATE INDEX IF NOT EXISTS eta_by_update ON eta_stats (app_id, last_updated);
"""
# Running jobs silent since before a time (the first parameter), by the server's limit
# or by their own; each is answered from its partial index above.
STALE_BY_DEFAULT = ("SELECT app_id, id FROM jobs WHERE idle_since IS NOT NULL "
                    "AND stale_after IS NULL AND idle_since < ? AND expires_at > ? LIMIT ?")
STALE_BY_OWN_LIMIT = ("SELECT app_id, id FROM jobs WHERE idle_since IS NOT NULL "
                      "AND stale_after IS NOT NULL AND idle_since + stale_after < ? "
                      "AND stale_after < ? AND expires_at > ? LIMIT ?")
def key_hash(key: str) -> str:
    """Hash an API key for storage and lookup (keys themselves are never stored)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class Store:
    """The database of one ``seenn serve``, whatever its engine; safe to use from many threads.

    Everything above the engine (the job operations, the HTTP app) sees only this
    interface and ``Transaction``, whose SQL is the same on both engines. An engine
    says how to get a connection, how to begin a read or a write, and which errors
    mean "try the transaction again".
    """

    #: The engine's name: ``"sqlite"`` or ``"postgresql"``.
    engine = ""
    #: The error a unique constraint raises.
    integrity_error: tuple[type[BaseException], ...] = ()
    #: Errors after which the whole write transaction may simply run again (deadlocks).
    retry_errors: tuple[type[BaseException], ...] = ()

    def __init__(self) -> None:
        self._last_purge = 0.0
        # The time source of TTLs and timestamps; tests move it forward.
        self.clock: Callable[[], float] = time.time
        # Called after each write transaction that changed jobs commits, with the app id
        # and the ids: the change feed of long polls listens here. Must not raise or block.
        self.on_commit: list[Callable[[str, frozenset[str]], None]] = []

    # The engine's part ----------------------------------------------------------------

    def _connection(self) -> Any:
        """A context manager lending a ``Connection`` (returned to the pool after)."""
        raise NotImplementedError

    def _lock_for(self, conn: Connection, app_id: str) -> Callable[[str], None] | None:
        """What a write transaction calls to lock a name before reading it (None: no need)."""
        return None

    def _begin(self, conn: Connection, *, write: bool) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Close the database connections; connections in use close when released."""
        raise NotImplementedError

    # Transactions -----------------------------------------------------------------------

    @contextmanager
    def read(self, app_id: str) -> Iterator[Transaction]:
        """A consistent read (one snapshot) of an app's jobs."""
        with self._connection() as conn:
            self._begin(conn, write=False)
            try:
                yield Transaction(conn, app_id, self.clock())
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @contextmanager
    def write(self, app_id: str) -> Iterator[Transaction]:
        """An atomic read-modify-write of an app's jobs.

        On PostgreSQL two writers may deadlock; the loser's statement raises one of
        ``retry_errors``, and the caller may run the whole transaction again
        (``transact`` does).
        """
        with self._connection() as conn:
            self._begin(conn, write=True)
            tx = Transaction(conn, app_id, self.clock(), self._lock_for(conn, app_id))
            try:
                yield tx
                tx.flush()
                self._before_commit(tx)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        if tx.changed:
            changed = frozenset(tx.changed)
            for callback in self.on_commit:
                try:
                    callback(app_id, changed)
                except Exception:
                    # The write is committed: its answer must not become an error.
                    logging.getLogger("seenn.server").exception(
                        "seenn serve: a commit callback failed")

    def _before_commit(self, tx: Transaction) -> None:
        """What the engine does last inside a write transaction (PostgreSQL: NOTIFY)."""

    def listen(self, callback: Callable[[str, frozenset[str]], None]) -> None:
        """Call ``callback(app_id, job_ids)`` for jobs other processes change, if the engine
        announces them (PostgreSQL); SQLite does not, and long polls poll it instead."""

    def versions(self, keys: Collection[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """A fingerprint of each live job among ``(app id, job id)`` keys, in any app.

        Equal fingerprints mean the stored document did not change (in this process's
        view); a job that is gone is left out. The change feed compares them to find
        what other processes wrote.
        """
        by_app: dict[str, list[str]] = {}
        for app_id, job_id in dict.fromkeys(keys):
            by_app.setdefault(app_id, []).append(job_id)
        found: dict[tuple[str, str], int] = {}
        now = self.clock()
        with self._connection() as conn:
            # By app and id: the (app_id, id) index answers it, whatever the table's size.
            for app_id, ids in by_app.items():
                for start in range(0, len(ids), IN_CHUNK):
                    chunk = ids[start:start + IN_CHUNK]
                    marks = ", ".join("?" * len(chunk))
                    for job_id, data in conn.execute(
                            f"SELECT id, data FROM jobs WHERE app_id = ? AND expires_at > ? "
                            f"AND id IN ({marks})", (app_id, now, *chunk)).fetchall():
                        found[(app_id, job_id)] = hash(data)
        return found

    def commit_counter(self) -> Callable[[], int] | None:
        """A cheap reading that changes whenever another connection commits, or ``None``."""
        return None

    def transact(self, app_id: str, work: Callable[[Transaction], T], *,
                 attempts: int = 5) -> T:
        """Run ``work`` in a write transaction, again from the start after a deadlock."""
        for attempt in range(attempts):
            try:
                with self.write(app_id) as tx:
                    return work(tx)
            except self.retry_errors:
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    # Apps and keys ------------------------------------------------------------------

    def apps(self) -> dict[str, tuple[str, str]]:
        """Key hash -> (app id, ``"secret"`` or ``"public"``) for every app."""
        with self._connection() as conn:
            rows = conn.execute("SELECT id, secret_hash, public_hash FROM apps").fetchall()
        keys: dict[str, tuple[str, str]] = {}
        for app_id, secret_hash, public_hash in rows:
            keys[secret_hash] = (app_id, "secret")
            keys[public_hash] = (app_id, "public")
        return keys

    def signing_keys(self) -> dict[str, bytes]:
        """App id -> the app's key for signing user tokens (made with the app, never sent)."""
        with self._connection() as conn:
            rows = conn.execute("SELECT id, signing_key FROM apps").fetchall()
        return {app_id: bytes.fromhex(key) for app_id, key in rows}

    def add_app(self, app_id: str, secret_key: str, public_key: str | None) -> str:
        """Register a key pair as an app, or update the public key of the secret key's app.

        With ``public_key=None`` an existing app keeps its public key; a new app needs one.
        Several processes starting together on one database register an app once.
        """
        with self.write("") as tx:
            if tx._lock is not None:
                tx._lock("apps")
            row = tx._conn.execute("SELECT id FROM apps WHERE secret_hash = ?",
                                   (key_hash(secret_key),)).fetchone()
            if row is not None:
                if public_key is not None:
                    try:
                        tx._conn.execute("UPDATE apps SET public_hash = ? WHERE id = ?",
                                         (key_hash(public_key), row[0]))
                    except self.integrity_error:
                        raise ValueError("the public key belongs to another app") from None
                return str(row[0])
            if public_key is None:
                raise ValueError("a new app needs a public key")
            try:
                tx._conn.execute("INSERT INTO apps (id, secret_hash, public_hash, created_at, "
                                 "signing_key) VALUES (?, ?, ?, ?, ?)",
                                 (app_id, key_hash(secret_key), key_hash(public_key), tx.now,
                                  secrets.token_hex(32)))
            except self.integrity_error:
                raise ValueError("the public key belongs to another app") from None
        return app_id

    def add_first_app(self, app_id: str, secret_key: str, public_key: str) -> bool:
        """Register a key pair as an app only if the database has no app yet.

        One transaction checks and inserts, so processes starting together on a new
        database register one pair between them. Returns whether this call did.
        """
        with self.write("") as tx:
            if tx._lock is not None:
                tx._lock("apps")
            if tx._conn.execute("SELECT 1 FROM apps LIMIT 1").fetchone() is not None:
                return False
            tx._conn.execute("INSERT INTO apps (id, secret_hash, public_hash, created_at, "
                             "signing_key) VALUES (?, ?, ?, ?, ?)",
                             (app_id, key_hash(secret_key), key_hash(public_key), tx.now,
                              secrets.token_hex(32)))
        return True

    def stale_jobs(self, *, now: float, default: float, since: float,
                   limit: int) -> list[tuple[str, str]]:
        """``(app id, job id)`` of running jobs, in every app, silent past their stale limit.

        A job's limit is its own ``stale_after``, else ``default`` (0: none); its silence
        counts from ``idle_since``, or from ``since`` if that is later. Each half reads
        only the candidates, through its partial index. At most ``limit`` of each kind.
        """
        found: list[tuple[str, str]] = []
        with self._connection() as conn:
            if default > 0 and since < now - default:
                found += conn.execute(STALE_BY_DEFAULT, (now - default, now, limit)).fetchall()
            found += conn.execute(STALE_BY_OWN_LIMIT, (now, now - since, now, limit)).fetchall()
        return [(str(app_id), str(job_id)) for app_id, job_id in found]

    def purge(self, interval: float = 60.0) -> int:
        """Delete expired jobs and idempotency records, at most once per ``interval``."""
        now = self.clock()
        if now - self._last_purge < interval:
            return 0
        self._last_purge = now
        with self.write("") as tx:
            purged: int = tx._conn.execute("DELETE FROM jobs WHERE expires_at <= ?",
                                           (now,)).rowcount
            tx._conn.execute("DELETE FROM idempotency WHERE created_at <= ?",
                             (now - IDEMPOTENCY_TTL,))
        return purged
