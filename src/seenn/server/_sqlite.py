"""The SQLite engine of ``seenn serve``: one file, WAL mode, one writer at a time.

The embedded default (``seenn demo``, ``seenn.server.running``, small installs). The
SQL of ``Transaction`` (``_store``) runs on it as written; what is SQLite's own is
here: the schema as SQLite types it, the file created private, the columns an older
database gains at start, and how writers take turns.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

from seenn.server._store import INDEXES, Store
from seenn.server._transaction import (
    FINISHED,
    Connection,
    Transaction,
    _idle_since,
    _last_write,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS apps (
    id TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL UNIQUE,
    public_hash TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    signing_key TEXT
);
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    app_id TEXT NOT NULL,
    id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    parent_id TEXT,
    child_index INTEGER,
    start_hash TEXT NOT NULL,
    expires_at REAL NOT NULL,
    data TEXT NOT NULL,
    finished INTEGER NOT NULL DEFAULT 0,
    aggregate TEXT,
    idle_since REAL,
    stale_after REAL,
    eta TEXT,
    UNIQUE (app_id, id)
);
CREATE TABLE IF NOT EXISTS idempotency (
    app_id TEXT NOT NULL,
    key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    status INTEGER NOT NULL,
    body TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (app_id, key)
);
CREATE TABLE IF NOT EXISTS eta_stats (
    app_id TEXT NOT NULL,
    eta_key TEXT NOT NULL,
    count INTEGER NOT NULL,
    total REAL NOT NULL,
    min REAL NOT NULL,
    max REAL NOT NULL,
    p50 REAL NOT NULL,
    p95 REAL NOT NULL,
    confidence REAL NOT NULL,
    last_updated REAL NOT NULL,
    detail TEXT NOT NULL,
    "window" TEXT NOT NULL,
    PRIMARY KEY (app_id, eta_key)
);
"""

def _create_private(path: str) -> None:
    """Create the database file readable by its owner only, if it does not exist yet.

    It holds every job's metadata, results and errors, and the key that signs user
    tokens. SQLite gives its ``-wal`` and ``-shm`` files the database file's mode.
    """
    if path in ("", ":memory:"):
        return
    with suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _migrate(conn: sqlite3.Connection) -> None:
    """Add the columns a database made by an older version lacks (once, in one transaction)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        job_columns = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
        if "finished" not in job_columns:
            conn.execute("ALTER TABLE jobs ADD COLUMN finished INTEGER NOT NULL DEFAULT 0")
            conn.execute("ALTER TABLE jobs ADD COLUMN aggregate TEXT")
            done = [(seq,) for seq, data in conn.execute("SELECT seq, data FROM jobs")
                    if json.loads(data).get("status") in FINISHED]
            conn.executemany("UPDATE jobs SET finished = 1 WHERE seq = ?", done)
        if "idle_since" not in job_columns:
            conn.execute("ALTER TABLE jobs ADD COLUMN idle_since REAL")
            conn.execute("ALTER TABLE jobs ADD COLUMN stale_after REAL")
            # Running jobs start their stale clock at their last update; the policy's
            # grace after a start still gives their workers a whole limit.
            for seq, data in conn.execute(
                    "SELECT seq, data FROM jobs WHERE finished = 0").fetchall():
                job = json.loads(data)
                since = _idle_since(job, _last_write(job))
                if since is not None:
                    conn.execute("UPDATE jobs SET idle_since = ? WHERE seq = ?", (since, seq))
        if "eta" not in job_columns:
            # Jobs of an older version have no ETA state: _eta reads them as such.
            conn.execute("ALTER TABLE jobs ADD COLUMN eta TEXT")
        if "signing_key" not in {row[1] for row in conn.execute("PRAGMA table_info(apps)")}:
            conn.execute("ALTER TABLE apps ADD COLUMN signing_key TEXT")
        for (app_id,) in conn.execute(
                "SELECT id FROM apps WHERE signing_key IS NULL").fetchall():
            conn.execute("UPDATE apps SET signing_key = ? WHERE id = ?",
                         (secrets.token_hex(32), app_id))
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _use_wal(conn: sqlite3.Connection, *, within: float = 30.0) -> None:
    """Put the database in WAL mode (a no-op once it is), waiting out another opener.

    Connections switching a new file to WAL at the same moment (server processes or
    threads starting together) can make SQLite answer "database is locked" at once,
    without waiting in its busy handler: then try again, for up to ``within`` seconds.
    """
    deadline = time.monotonic() + within
    pause = 0.001
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() >= deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


class SQLiteStore(Store):
    """The SQLite engine: one file, WAL mode, writers serialised by ``BEGIN IMMEDIATE``.

    Args:
        path: The database file (created ``0600`` if missing), or ``":memory:"``.
        max_idle: Connections kept open between requests.
    """

    engine = "sqlite"
    integrity_error = (sqlite3.IntegrityError,)

    def __init__(self, path: str, *, max_idle: int = 16) -> None:
        super().__init__()
        self.path = path
        # A pool rather than one connection per thread: a threaded server makes a
        # thread per client connection, and per-thread handles would pile up.
        self._idle: list[sqlite3.Connection] = []
        self._max_idle = max_idle
        self._lock = threading.Lock()
        self._writer = threading.Lock()
        self._closed = False
        _create_private(path)
        with self._connection() as conn:
            conn.executescript(SCHEMA)
            _migrate(conn)
            conn.executescript(INDEXES)

    def _open(self) -> sqlite3.Connection:
        # isolation_level=None: transactions are begun explicitly, never implicitly.
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=30000")
        _use_wal(conn)
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._open()
        try:
            yield conn
        finally:
            with self._lock:
                keep = not self._closed and len(self._idle) < self._max_idle
                if keep:
                    self._idle.append(conn)
            if not keep:
                conn.close()

    def _begin(self, conn: Connection, *, write: bool) -> None:
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")

    @contextmanager
    def write(self, app_id: str) -> Iterator[Transaction]:
        """An atomic read-modify-write, one at a time in this process.

        SQLite lets one writer in at a time anyway. Writers of this process queue on a
        lock instead of in SQLite's busy handler, which sleeps for growing intervals
        (1 ms, then 2, 5, 10 ... up to 100) and so leaves the database idle while
        writers wait; other processes still meet that handler.
        """
        with self._writer, super().write(app_id) as tx:
            yield tx

    def commit_counter(self) -> Callable[[], int] | None:
        """SQLite's ``data_version`` on a connection of its own: it changes whenever
        another connection commits, and polling it reads no table.

        Call the result from one thread only; it opens its connection on first use (so
        after a fork, a new counter opens its own).
        """
        conn: list[sqlite3.Connection] = []

        def read() -> int:
            if not conn:
                conn.append(self._open())
            return int(conn[0].execute("PRAGMA data_version").fetchone()[0])

        return read

    def close(self) -> None:
        """Close the idle connections; connections in use close when released."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

