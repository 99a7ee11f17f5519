"""The durable outbox: undelivered events in a SQLite file, claimed by one process at a time.

A row goes once its event is settled; what a crash or shutdown leaves behind is
read back (``load``) and replayed by the next exporter that opens the file, or
adopted by a sibling process (``family``). The file, its WAL and its lock file
are created ``0600``: events carry user ids, titles and results.

The claim is an exclusive ``flock`` on ``<path>.lock``, held for the life of
the process (a ``flock`` belongs to the open file, so it ends with the process
whatever the way it ends). Whoever deletes an outbox deletes its lock file last,
while holding it; so whoever takes a lock checks that the path still names the
file it locked (``lock_file``), or it could hold a lock nobody else can see.

A path that cannot be opened is a bad argument (``ValidationError`` naming
``outbox``). Once open, the outbox is a convenience, never a dependency: a
write that fails (a full disk, a read-only file) or a file deleted while the
process runs is logged once a minute, naming the path, and the exporter goes
on delivering from memory.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO

from seenn._core.models import JobError, JobResult, Queue, Stage
from seenn._core.validation import fail

if TYPE_CHECKING:
    from seenn._core.events import JobEvent
    from seenn._core.pipeline import RateLimitedLog

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no claims, no adoption
    fcntl = None  # type: ignore[assignment]

__all__ = ["CAN_LOCK", "LOAD_ORDER", "Outbox", "OutboxInUse", "Row", "decode_row", "decode_rows",
           "lock_file", "reason", "remove_outbox"]

LOAD_ORDER = ("ORDER BY (SELECT min(accepted) FROM events WHERE job_id = e.job_id), "
              "job_id, seq")
"""How stored events are read back: jobs in the order they began, each in sequence order."""

Row = tuple[str, int, str, str, float]
"""An outbox row as stored: job id, sequence, kind, the event as JSON, when accepted."""

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLAIM_TRIES = 5

CAN_LOCK = fcntl is not None
"""Whether files can be claimed (``flock``): without it no file is adopted or shared."""


def _before_lock(path: str) -> None:
    """A seam for tests: runs between opening a lock file and locking it.

    That is where another process may delete the lock file (and make a new one).
    """


class OutboxInUse(Exception):
    """Another open file (a live process, or another exporter here) holds the outbox's lock."""


class Outbox:
    """Undelivered events in SQLite, so a crash or restart loses none of them.

    Args:
        path: The database file.
        max_events: The size cap (terminal events go over it).
        log: Where failures are logged, once a minute each.
        per_process: A file of this process alone, named afresh: it must not exist
            yet, and it is deleted (with its WAL and lock file) when closed empty.

    Raises:
        OutboxInUse: another open file holds the lock.
        ValidationError: ``outbox``: the file cannot be opened or created (its
            directory is missing or not a directory, it is not a SQLite file, ...).
    """

    SCHEMA = """
    CREATE TABLE IF NOT EXISTS events (
        job_id TEXT NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL,
        event TEXT NOT NULL, accepted REAL NOT NULL, PRIMARY KEY (job_id, seq)
    );
    """

    def __init__(self, path: str, max_events: int, log: RateLimitedLog, *,
                 per_process: bool = False) -> None:
        self.path = path
        self.max_events = max_events
        self.per_process = per_process
        self._log = log
        self._lock = threading.Lock()
        self.closed = False
        self.failing = False  # the last write failed: new rows may not be on disk
        self.gone = False  # the file was deleted or replaced under us
        self._owner = _claim(path)
        created = False
        try:
            _create_private(path, fresh=per_process)
            created = per_process
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
            problem = reason(exc)
        else:
            return
        if per_process:  # what this process made for itself and cannot use
            _unlink_quietly(*(_companions(path) if created else ()), path + ".lock")
        if self._owner is not None:
            self._owner.close()
        fail("outbox", f"{path} cannot be used as an outbox: {problem}")

    def _check_identity(self) -> None:
        if not self.gone and _identity(self.path) != self._identity:
            # SQLite goes on writing to the deleted file: nothing would survive a
            # restart, and nothing would say so.
            self.gone = True
            self._log.warning("outbox-gone", "seenn: HTTP exporter: the outbox %s was "
                              "deleted or replaced while running; events are still "
                              "delivered from memory, but no longer survive a restart",
                              self.path)

    def _write(self, sql: str, args: tuple[Any, ...]) -> int | None:
        """Run one write; the rows it changed, or ``None`` if it failed (logged)."""
        with self._lock:
            if self.closed:
                return None  # a delivery thread finishing after shutdown: the row stays
            self._check_identity()
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

    def add_rows(self, rows: Sequence[Row]) -> bool:
        """Store rows taken from another outbox, in one transaction; ``False`` if not stored.

        The cap does not apply: the rows were on disk already, in the file they come from.
        """
        with self._lock:
            if self.closed:
                return False
            self._check_identity()
            if self.gone:
                return False  # they would not survive a restart here: leave them where they are
            conn = self._conn
            before = conn.total_changes
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.executemany("INSERT OR IGNORE INTO events (job_id, seq, kind, event, "
                                     "accepted) VALUES (?, ?, ?, ?, ?)", rows)
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                self.failing = True
                self._log.error("outbox-write", "seenn: HTTP exporter: cannot write the outbox "
                                "%s (%s); events are delivered from memory meanwhile, but "
                                "would not survive a restart", self.path, exc)
                return False
            self.failing = False
            self.count += conn.total_changes - before
            return True

    def remove(self, event: JobEvent) -> None:
        self.count -= self._write("DELETE FROM events WHERE job_id = ? AND seq = ?",
                                  (event.job_id, event.sequence)) or 0

    def remove_job(self, job_id: str) -> None:
        self.count -= self._write("DELETE FROM events WHERE job_id = ?", (job_id,)) or 0

    def load(self) -> list[JobEvent]:
        """Every stored event: jobs in the order they began, each in sequence order."""
        # Progress rows are written later than the start and end rows around them.
        return self._read(f"SELECT event FROM events AS e {LOAD_ORDER}", ())

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
        return decode_rows(rows, self.path, self._log)

    def close(self) -> None:
        """Release the file; a per-process file left empty goes, WAL and lock file included."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            empty = False
            if self.per_process:
                self._check_identity()
                try:
                    empty = not self.gone and self._conn.execute(
                        "SELECT count(*) FROM events").fetchone()[0] == 0
                except sqlite3.Error:
                    empty = False
            self._conn.close()
            if empty:
                # Still holding the lock: nobody may adopt or claim it meanwhile.
                remove_outbox(self.path, self._log)
            if self._owner is not None:
                self._owner.close()  # releases the claim

    def abandon(self) -> None:
        """Let go of an outbox inherited over ``fork()``, touching nothing of the parent's.

        Only this process's descriptor of the lock file is closed: the lock belongs to
        the open file, which the parent still holds, so the parent keeps its claim, and
        once the parent is gone its file may be adopted (the child no longer keeps it
        locked). The SQLite connection is left open and unused: closing it could let
        SQLite checkpoint or delete the parent's WAL.
        """
        self.closed = True
        owner, self._owner = self._owner, None
        if owner is not None:
            owner.close()


def decode_rows(rows: Sequence[tuple[str]], path: str, log: RateLimitedLog) -> list[JobEvent]:
    """The events of stored JSON texts; unreadable ones are skipped and logged."""
    events = []
    for (text,) in rows:
        event = decode_row(text, path, log)
        if event is not None:
            events.append(event)
    return events


def decode_row(text: str, path: str, log: RateLimitedLog) -> JobEvent | None:
    """The event of one stored JSON text; ``None`` (logged) if it is unreadable."""
    try:
        return _event_from_dict(json.loads(text))
    except (ValueError, KeyError, TypeError):
        log.error("outbox-row", "seenn: HTTP exporter: unreadable row of the outbox %s "
                  "skipped: %.200s", path, text)
        return None


def lock_file(path: str, *, create: bool) -> BinaryIO | None:
    """Open and lock the lock file ``path`` without waiting.

    Returns:
        The open, locked file; ``None`` if the path no longer names the file locked (it
        was deleted, and maybe made anew, between the open and the lock: a lock on it
        would claim nothing).

    Raises:
        OutboxInUse: another open file holds the lock.
        OSError: it cannot be opened (missing with ``create=False``, a symlink, ...).
    """
    flags = os.O_WRONLY | os.O_APPEND | _NOFOLLOW | (os.O_CREAT if create else 0)
    handle = os.fdopen(os.open(path, flags, 0o600), "ab", buffering=0)
    try:
        _before_lock(path)
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                    raise OutboxInUse(path) from None
                raise
        info = os.fstat(handle.fileno())
        if _identity(path) != (info.st_dev, info.st_ino):
            handle.close()
            return None
    except BaseException:
        handle.close()
        raise
    return handle


def remove_outbox(path: str, log: RateLimitedLog) -> None:
    """Delete an outbox whose lock the caller holds: the database, WAL, shm, then the lock file."""
    try:
        for name in (*_companions(path), path + ".lock"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)
    except OSError as exc:
        log.error("outbox-remove", "seenn: HTTP exporter: cannot delete the outbox %s (%s)",
                  path, reason(exc))


def _companions(path: str) -> tuple[str, str, str]:
    return path, path + "-wal", path + "-shm"


def _unlink_quietly(*paths: str) -> None:
    for name in paths:
        with contextlib.suppress(OSError):
            os.unlink(name)


def _claim(path: str) -> BinaryIO | None:
    """Hold an exclusive lock on ``<path>.lock``: one process per outbox.

    Two processes replaying one outbox would send each other's events twice and
    out of order. Returns the open lock file (``None`` where ``fcntl`` is missing).

    Raises:
        OutboxInUse: another open file holds it.
        ValidationError: ``outbox``: the lock file cannot be made, or keeps being replaced.
    """
    if fcntl is None:  # pragma: no cover - Windows
        return None
    handle = None
    problem = "its lock file keeps being replaced"
    for _ in range(_CLAIM_TRIES):
        try:
            handle = lock_file(path + ".lock", create=True)
        except OSError as exc:
            problem = reason(exc)
            break
        if handle is not None:
            break
    if handle is None:
        fail("outbox", f"{path} cannot be used as an outbox: {problem}")
    return handle


def _create_private(path: str, *, fresh: bool = False) -> None:
    """Create the database file ``0600`` if missing; SQLite gives its WAL the same mode.

    ``fresh``: the file must not exist yet, and may not be a symlink.
    """
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL | _NOFOLLOW if fresh else 0)
    os.close(os.open(path, flags, 0o600))


def _identity(path: str) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def reason(exc: BaseException) -> str:
    """What went wrong, for a log line or an error: the OS's words when there are some."""
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
