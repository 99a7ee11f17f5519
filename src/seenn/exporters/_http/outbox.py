"""The durable outbox: undelivered events in a SQLite file, claimed by one process at a time.

A row goes once its event is settled; what a crash or shutdown leaves behind is
read back (``load``) and replayed by the next exporter that opens the file.
The file, its WAL and its lock file are created ``0600``: events carry user ids,
titles and results.

A path that cannot be opened is a bad argument (``ValidationError`` naming
``outbox``). Once open, the outbox is a convenience, never a dependency: a
write that fails (a full disk, a read-only file) or a file deleted while the
process runs is logged once a minute, naming the path, and the exporter goes
on delivering from memory.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from seenn._core.models import JobError, JobResult, Queue, Stage
from seenn._core.validation import fail

if TYPE_CHECKING:
    from seenn._core.events import JobEvent
    from seenn._core.pipeline import RateLimitedLog

__all__ = ["Outbox"]


class Outbox:
    """Undelivered events in SQLite, so a crash or restart loses none of them.

    Raises:
        ValidationError: ``outbox``: the file cannot be opened or created (its
            directory is missing or not a directory, it is not a SQLite file, ...),
            or another process uses it.
    """

    SCHEMA = """
    CREATE TABLE IF NOT EXISTS events (
        job_id TEXT NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL,
        event TEXT NOT NULL, accepted REAL NOT NULL, PRIMARY KEY (job_id, seq)
    );
    """

    def __init__(self, path: str, max_events: int, log: RateLimitedLog) -> None:
        self.path = path
        self.max_events = max_events
        self._log = log
        self._lock = threading.Lock()
        self.closed = False
        self.failing = False  # the last write failed: new rows may not be on disk
        self.gone = False  # the file was deleted or replaced under us
        self._owner = _claim(path)
        try:
            _create_private(path)
            self._conn = sqlite3.connect(path, timeout=30.0, isolation_level=None,
                                         check_same_thread=False)
            try:
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=NORMAL")
                self._conn.executescript(self.SCHEMA)
                self.count: int = self._conn.execute(
                    "SELECT count(*) FROM events").fetchone()[0]
                self._identity = _identity(path)
            except BaseException:
                self._conn.close()
                raise
        except (OSError, sqlite3.Error) as exc:
            problem = _reason(exc)
        else:
            return
        if self._owner is not None:
            self._owner.close()
        fail("outbox", f"{path} cannot be used as an outbox: {problem}")

    def _write(self, sql: str, args: tuple[Any, ...]) -> int | None:
        """Run one write; the rows it changed, or ``None`` if it failed (logged)."""
        with self._lock:
            if self.closed:
                return None  # a delivery thread finishing after shutdown: the row stays
            if not self.gone and _identity(self.path) != self._identity:
                # SQLite goes on writing to the deleted file: nothing would survive a
                # restart, and nothing would say so.
                self.gone = True
                self._log.warning("outbox-gone", "seenn: HTTP exporter: the outbox %s was "
                                  "deleted or replaced while running; events are still "
                                  "delivered from memory, but no longer survive a restart",
                                  self.path)
            try:
                count: int = self._conn.execute(sql, args).rowcount
            except sqlite3.Error as exc:
                self.failing = True
                self._log.error("outbox-write", "seenn: HTTP exporter: cannot write the outbox "
                                "%s (%s); events are delivered from memory meanwhile, but "
                                "would not survive a restart", self.path, exc)
                return None
            self.failing = False
            return count

    def add(self, event: JobEvent) -> bool:
        """Store an event; ``False`` if it is not on disk (the outbox is full or failing).

        Terminal events are written whatever the count.
        """
        if self.count >= self.max_events and not event.is_terminal:
            self._log.warning("outbox-full", "seenn: HTTP exporter: the outbox %s holds %d "
                              "events (max_outbox_events); new progress and jobs are kept "
                              "in memory only", self.path, self.count)
            return False
        written = self._write(
            "INSERT OR IGNORE INTO events (job_id, seq, kind, event, accepted) "
            "VALUES (?, ?, ?, ?, ?)",
            (event.job_id, event.sequence, event.kind, json.dumps(event.to_dict()),
             time.time()))
        if written is None:
            return False
        self.count += written
        return True

    def remove(self, event: JobEvent) -> None:
        self.count -= self._write("DELETE FROM events WHERE job_id = ? AND seq = ?",
                                  (event.job_id, event.sequence)) or 0

    def remove_job(self, job_id: str) -> None:
        self.count -= self._write("DELETE FROM events WHERE job_id = ?", (job_id,)) or 0

    def load(self) -> list[JobEvent]:
        """Every stored event: jobs in the order they began, each in sequence order."""
        # Progress rows are written later than the start and end rows around them.
        return self._read("SELECT event FROM events AS e ORDER BY (SELECT min(accepted) "
                          "FROM events WHERE job_id = e.job_id), job_id, seq", ())

    def job_events(self, job_id: str, after: int) -> list[JobEvent]:
        """The stored events of one job with a sequence above ``after``, in order."""
        return self._read("SELECT event FROM events WHERE job_id = ? AND seq > ? ORDER BY seq",
                          (job_id, after))

    def _read(self, sql: str, args: tuple[Any, ...]) -> list[JobEvent]:
        with self._lock:
            if self.closed:
                return []
            try:
                rows = self._conn.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                self._log.error("outbox-read", "seenn: HTTP exporter: cannot read the outbox "
                                "%s (%s)", self.path, exc)
                return []
        events = []
        for (text,) in rows:
            try:
                events.append(_event_from_dict(json.loads(text)))
            except (ValueError, KeyError, TypeError):
                self._log.error("outbox-row", "seenn: HTTP exporter: unreadable row of the "
                                "outbox %s skipped: %.200s", self.path, text)
        return events

    def close(self) -> None:
        with self._lock:
            if not self.closed:
                self.closed = True
                self._conn.close()
                if self._owner is not None:
                    self._owner.close()  # releases the claim


def _claim(path: str) -> Any:
    """Hold an exclusive lock on ``<path>.lock``: one process per outbox.

    Two processes replaying one outbox would send each other's events twice and
    out of order. Returns the open lock file (``None`` where ``fcntl`` is missing).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return None
    try:
        handle = os.fdopen(_open_private(path + ".lock", os.O_APPEND), "a")
    except OSError as exc:
        problem = _reason(exc)
    else:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            problem = "it is in use by another process: give each process its own"
        else:
            problem = ""
    if problem:
        fail("outbox", f"{path} cannot be used as an outbox: {problem}")
    return handle


def _open_private(path: str, flags: int = 0) -> int:
    """Open ``path`` for writing, creating it readable by its owner only (``0600``)."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | flags, 0o600)


def _create_private(path: str) -> None:
    """Create the database file ``0600`` if missing; SQLite gives its WAL the same mode."""
    os.close(_open_private(path))


def _identity(path: str) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _event_from_dict(data: Mapping[str, Any]) -> JobEvent:
    from seenn._core.events import JobEvent

    return JobEvent(
        kind=data["kind"], job_id=data["job_id"], job_type=data["job_type"],
        user_id=data.get("user_id"), title=data.get("title"), status=data["status"],
        progress=data["progress"], message=data.get("message"),
        stage=Stage.from_wire(data.get("stage")), queue=Queue.from_wire(data.get("queue")),
        metadata=data.get("metadata"), result=JobResult.from_wire(data.get("result")),
        error=JobError.from_wire(data.get("error")), retryable=data.get("retryable"),
        parent_id=data.get("parent_id"), child_index=data.get("child_index"),
        sequence=data["sequence"], timestamp=data["timestamp"],
        trace_id=data.get("trace_id"), span_id=data.get("span_id"))
