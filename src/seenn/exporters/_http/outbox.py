"""The durable outbox: undelivered events in a SQLite file, claimed by one process at a time.

A row goes once its event is settled; what a crash or shutdown leaves behind is
read back (``load``) and replayed by the next exporter that opens the file.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from seenn._core.models import JobError, JobResult, Queue, Stage

if TYPE_CHECKING:
    from seenn._core.events import JobEvent

__all__ = ["Outbox"]

logger = logging.getLogger("seenn")


class Outbox:
    """Undelivered events in SQLite, so a crash or restart loses none of them."""

    SCHEMA = """
    CREATE TABLE IF NOT EXISTS events (
        job_id TEXT NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL,
        event TEXT NOT NULL, accepted REAL NOT NULL, PRIMARY KEY (job_id, seq)
    );
    """

    def __init__(self, path: str, max_events: int) -> None:
        self.path = path
        self.max_events = max_events
        self._lock = threading.Lock()
        self._owner = _claim(path)
        self._conn = sqlite3.connect(path, timeout=30.0, isolation_level=None,
                                     check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(self.SCHEMA)
        self.count = self._conn.execute("SELECT count(*) FROM events").fetchone()[0]
        self.closed = False

    def _write(self, sql: str, args: tuple[Any, ...]) -> int:
        with self._lock:
            if self.closed:
                return 0  # a delivery thread finishing after shutdown: the row stays
            try:
                count: int = self._conn.execute(sql, args).rowcount
            except sqlite3.Error as exc:
                logger.error("seenn: HTTP exporter: outbox %s: %s", self.path, exc)
                return 0
            return count

    def add(self, event: JobEvent) -> bool:
        """Store an event; ``False`` when the outbox is full (terminal events always fit)."""
        if self.count >= self.max_events and not event.is_terminal:
            return False
        self.count += self._write(
            "INSERT OR IGNORE INTO events (job_id, seq, kind, event, accepted) "
            "VALUES (?, ?, ?, ?, ?)",
            (event.job_id, event.sequence, event.kind, json.dumps(event.to_dict()),
             time.time()))
        return True

    def remove(self, event: JobEvent) -> None:
        self.count -= self._write("DELETE FROM events WHERE job_id = ? AND seq = ?",
                                  (event.job_id, event.sequence))

    def remove_job(self, job_id: str) -> None:
        self.count -= self._write("DELETE FROM events WHERE job_id = ?", (job_id,))

    def load(self) -> list[JobEvent]:
        with self._lock:
            # Jobs in the order they began, each in its own sequence order: progress
            # rows are written later than the start and end rows around them.
            rows = self._conn.execute(
                "SELECT event FROM events AS e ORDER BY (SELECT min(accepted) FROM events "
                "WHERE job_id = e.job_id), job_id, seq").fetchall()
        events = []
        for (text,) in rows:
            try:
                events.append(_event_from_dict(json.loads(text)))
            except (ValueError, KeyError, TypeError):
                logger.error("seenn: HTTP exporter: unreadable outbox row skipped: %.200s", text)
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
    handle = open(path + ".lock", "a")  # noqa: SIM115 - held open as the claim
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        from seenn._core.validation import fail

        fail("outbox", f"{path} is in use by another process: give each process its own")
    return handle


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
