"""``HTTPExporter``: job events to a Seenn-compatible backend, in order, never blocking.

How it works:

* ``export()`` only files events into per-job queues (and, with an outbox,
  into SQLite) and returns; a small pool of delivery threads sends them.
* Per job, one call at a time, in event order; different jobs go out
  concurrently, up to ``max_concurrency``. A child's start waits for its
  parent's start, so the backend never sees a child of an unknown parent.
* Progress is coalesced per job: a progress event waiting to be sent is
  replaced by a newer one, and a job sends at most one progress call per
  ``progress_interval``. Start and terminal events are never coalesced.
* Failures are retried with exponential backoff and full jitter, honouring
  ``Retry-After`` (a 429 pauses every job, since the limit is per key), for up
  to ``delivery_timeout`` per event; a retry waits on a timer, not on a thread.
  400/401/403 are not retried: logged with the job id and counted, and a
  rejected start drops the rest of its job instead of causing a storm of 404s.
* A job resumed from another process (``seenn.propagation``) retries a 404 for
  up to a minute: its start may still be on its way from the process that
  started it.
* Every call carries ``Idempotency-Key: <job id>.<sequence>``: the same on
  every retry and after a replay from the outbox, so nothing is applied twice.
* Memory is bounded by ``max_pending_jobs``; what is dropped is counted and
  logged, terminal events last.
"""

from __future__ import annotations

import heapq
import json
import logging
import os
import random
import sqlite3
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from seenn._core.events import RESUMED_SEQUENCE_UNIT
from seenn._core.models import JobError, JobResult, Queue, Stage
from seenn._core.pipeline import ExportResult
from seenn.errors import (
    APIConnectionError,
    ConflictError,
    NotFoundError,
    RateLimitError,
    SeennError,
    ServerError,
)

if TYPE_CHECKING:
    from seenn._client.client import SeennClient
    from seenn._core.events import JobEvent

__all__ = ["DeliveryStats", "HTTPExporter"]

logger = logging.getLogger("seenn")

ANONYMOUS_USER = "anonymous"
RESUMED_START_GRACE = 60.0
"""Seconds a resumed job's events retry a 404 (their start comes from another process)."""
_PRIVATE_DETAILS = ("traceback", "chain")


_MAX_REMEMBERED = 100_000


def _remember(memory: dict[str, Any], job_id: str, value: Any = None) -> None:
    """Set ``memory[job_id]``, forgetting the oldest half past ``_MAX_REMEMBERED``."""
    memory[job_id] = value
    if len(memory) > _MAX_REMEMBERED:
        for old in list(memory)[:_MAX_REMEMBERED // 2]:
            del memory[old]


@dataclass(slots=True)
class _Pending:
    event: JobEvent
    accepted: float
    attempts: int = 0
    key_suffix: str = ""  # "p" for the progress call made from a terminal event


@dataclass(slots=True)
class _Job:
    id: str
    parent_id: str | None = None
    queue: deque[_Pending] = field(default_factory=deque)
    busy: bool = False  # a delivery thread is sending the head event
    scheduled: bool = False  # in the ready queue or on a timer
    due: float = 0.0  # the head may not be sent before this (retry or progress rate)
    started_acked: bool = False
    server_id: str | None = None
    last_progress: float = float("-inf")
    dependents: list[str] = field(default_factory=list)
    shown: tuple[int, Stage | None, str | None] = (0, None, None)  # what the backend will show
    finished: bool = False  # its terminal event was handled


class _Outbox:
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


_live: weakref.WeakSet[HTTPExporter] = weakref.WeakSet()
_inherited: list[_Outbox] = []  # outboxes a forked child must leave alone


def _after_fork_in_child() -> None:
    for exporter in list(_live):
        exporter._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@dataclass
class DeliveryStats:
    """Counters of an :class:`HTTPExporter` (read ``exporter.stats``).

    Attributes:
        accepted: Events taken by ``export()``.
        delivered: Events the backend acknowledged.
        requests: HTTP calls made (attempts included).
        retries: Attempts that failed and were retried.
        coalesced: Progress events replaced by a newer one before they were sent.
        rejected: Events the backend refused for good (400/401/403/404/409) and
            events dropped because their job's start was refused.
        dropped: Events dropped because memory or the outbox was full.
        lost: Events given up on after ``delivery_timeout`` or at shutdown.
        replayed: Events read back from the outbox at start.
    """

    accepted: int = 0
    delivered: int = 0
    requests: int = 0
    retries: int = 0
    coalesced: int = 0
    rejected: int = 0
    dropped: int = 0
    lost: int = 0
    replayed: int = 0


class HTTPExporter:
    """Delivers job events to a Seenn-compatible backend (Seenn Cloud or ``seenn serve``).

    Put it behind a :class:`~seenn.exporters.BatchProcessor` (``seenn.configure``
    does). Started jobs become ``POST /jobs`` with the in-process job id,
    progress ``POST /jobs/{id}/progress``, completion ``.../complete`` and
    failure ``.../fail``. See the module documentation for the guarantees.

    Args:
        api_key: The secret key; defaults to ``SEENN_API_KEY``.
        base_url: The backend; defaults to ``SEENN_BASE_URL``, then Seenn Cloud.
        client: A :class:`~seenn.SeennClient` to send with instead (its transport and
            settings are used; its retry policy is not: the exporter retries itself).
        include_traceback: Send the traceback and exception chain of a failure in
            ``error.details``. Off by default: job errors are readable by end users
            through public keys.
        include_trace_context: Put the OpenTelemetry ``traceId``/``spanId`` of the
            start in the job's metadata, so a backend can link the job to its trace.
        progress_interval: The least time between two progress calls of one job.
        max_concurrency: How many calls may be in flight at once (different jobs).
        outbox: A SQLite file keeping undelivered events across crashes and restarts.
        max_outbox_events: The outbox's size cap: beyond it, progress and new jobs
            are kept in memory only (and counted); terminal events are always written.
        delivery_timeout: How long an event may keep failing before it counts as lost.
        request_timeout: Seconds one HTTP attempt may take.
        max_pending_jobs: How many jobs may have undelivered events in memory.
    """

    inline = False

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        client: SeennClient | None = None,
        include_traceback: bool = False,
        include_trace_context: bool = False,
        progress_interval: float = 0.25,
        max_concurrency: int = 8,
        outbox: str | os.PathLike[str] | None = None,
        max_outbox_events: int = 100_000,
        delivery_timeout: float = 300.0,
        request_timeout: float = 10.0,
        max_pending_jobs: int = 10_000,
    ) -> None:
        from seenn._client.client import SeennClient
        from seenn._core.validation import fail

        if max_concurrency < 1:
            fail("max_concurrency", "must be at least 1")
        if progress_interval < 0:
            fail("progress_interval", "must not be negative")
        if delivery_timeout <= 0:
            fail("delivery_timeout", "must be positive")
        if max_pending_jobs < 1:
            fail("max_pending_jobs", "must be at least 1")
        self._owns_client = client is None
        self._client = client if client is not None else SeennClient(
            api_key, base_url=base_url, timeout=request_timeout, max_retries=0, deadline=None)
        self.include_traceback = include_traceback
        self.include_trace_context = include_trace_context
        self.progress_interval = progress_interval
        self.max_concurrency = max_concurrency
        self.delivery_timeout = delivery_timeout
        self.max_pending_jobs = max_pending_jobs
        self.stats = DeliveryStats()
        self._outbox_path = os.fspath(outbox) if outbox is not None else None
        self._max_outbox_events = max_outbox_events
        self._outbox: _Outbox | None = None
        # Seams for tests.
        self._clock: Callable[[], float] = time.monotonic
        self._random: Callable[[], float] = random.random
        self._reset()
        if self._outbox_path is not None:
            self._outbox = _Outbox(self._outbox_path, max_outbox_events)
            replay = self._outbox.load()
            if replay:
                with self._cond:
                    for event in replay:
                        self._accept(event, durable=True)
                    self.stats.replayed += len(replay)
                    self._start_workers()
                logger.info("seenn: HTTP exporter: replaying %d undelivered event(s) from %s",
                            len(replay), self._outbox_path)
        _live.add(self)

    def _reset(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._jobs: dict[str, _Job] = {}
        self._ready: deque[str] = deque()
        self._timers: list[tuple[float, int, str]] = []
        self._timer_seq = 0
        self._refused: dict[str, None] = {}  # jobs the backend refused: later events dropped
        self._overflow: dict[str, None] = {}  # jobs dropped for memory: outbox rows kept
        # What outlives a job's queue between its events (bounded): the backend's id
        # for it, when its last progress call went, whether its start was acknowledged.
        self._memory: dict[str, tuple[str | None, float, bool]] = {}
        self._workers: list[threading.Thread] = []
        self._busy = 0
        self._paused_until = 0.0
        self._stopping = False
        self._closed = False
        self._flushing = 0
        self._warned_at = 0.0
        self._warnings = 0

    def _after_fork(self) -> None:
        # The parent's threads, locks and sockets are not the child's: start over.
        closed = self._closed
        self._reset()
        self.stats = DeliveryStats()
        if closed:
            self._closed = self._stopping = True
            return
        if self._owns_client:
            self._client = type(self._client)(
                self._client._http._api_key, base_url=self._client.base_url,
                base_path=self._client.base_path, timeout=self._client.timeout,
                max_retries=0, deadline=None)
        if self._outbox is not None:
            # The parent keeps its outbox (and its claim on it): a forked child
            # delivers from memory, or opens an outbox of its own in a new exporter.
            logger.warning("seenn: HTTP exporter: a forked process does not share the "
                           "outbox %s; its events are kept in memory only",
                           self._outbox_path)
            # Never close the inherited connection: SQLite could take the parent's
            # WAL for its own and checkpoint or delete it.
            _inherited.append(self._outbox)
            self._outbox = None
            self._outbox_path = None

    # The processor side ---------------------------------------------------------------

    def persist(self, event: JobEvent) -> None:
        """Write a start or terminal event to the outbox now (called inline by the processor).

        Without an outbox this does nothing. It is what makes a job's start and end
        durable before ``track()`` returns, whatever the processor's queue holds.
        """
        if self._outbox is not None and event.kind != "progress" and not self._closed:
            self._outbox.add(event)

    def export(self, events: Sequence[JobEvent]) -> ExportResult:
        """File the events for delivery; returns at once (no network I/O here)."""
        with self._cond:
            if self._closed:
                return ExportResult.FAILURE
            for event in events:
                self._accept(event, durable=False)
            self._start_workers()
            self._cond.notify_all()
        return ExportResult.SUCCESS

    def _accept(self, event: JobEvent, *, durable: bool) -> None:
        stats = self.stats
        stats.accepted += 1
        job_id = event.job_id
        job = self._jobs.get(job_id)
        if job is None:
            if job_id in self._refused:
                stats.rejected += 1
                self._forget_durable(event)
                return
            pending = len(self._jobs)
            # Terminal events may go over the cap (their job's start was delivered or
            # is lost); only at twice the cap do they go too.
            limit = self.max_pending_jobs * (2 if event.is_terminal else 1)
            if job_id in self._overflow or pending >= limit:
                # Dropped from memory; with an outbox the rows stay for the next start.
                stats.dropped += 1
                if event.kind == "started":
                    _remember(self._overflow, job_id)
                elif not durable and self._outbox is not None:
                    self._outbox.add(event)
                self._warn("seenn: HTTP exporter: %d jobs are waiting for the backend; "
                           "dropped the %s event of job %s", pending, event.kind, job_id)
                return
            parent_id = event.parent_id if event.kind == "started" else None
            if parent_id in self._refused:
                parent_id = None  # its parent will never exist: start it on its own
            job = _Job(job_id, parent_id=parent_id)
            remembered = self._memory.pop(job_id, None)
            if remembered is not None:
                job.server_id, job.last_progress, job.started_acked = remembered
            self._jobs[job_id] = job
        if not durable and self._outbox is not None and not self._outbox.add(event):
            stats.dropped += 1
            self._warn("seenn: HTTP exporter: outbox %s is full; the %s event of job %s "
                       "is kept in memory only", self._outbox_path, event.kind, job_id)
        if event.is_terminal and self._stale(job, event):
            # complete and fail carry no progress or stage: bring them up to date first.
            self._enqueue(job, _Pending(replace(event, kind="progress", status="running"),
                                        self._clock(), key_suffix="p"))
        if event.kind != "started":
            job.shown = (event.progress, event.stage, event.message)
        elif event.stage is not None:
            job.shown = (0, event.stage, None)
        self._enqueue(job, _Pending(event, self._clock()))

    @staticmethod
    def _stale(job: _Job, event: JobEvent) -> bool:
        progress, stage, message = job.shown
        if event.kind == "completed":
            return event.stage != stage
        return (event.progress, event.stage, event.message) != (progress, stage, message)

    def _enqueue(self, job: _Job, pending: _Pending) -> None:
        stats = self.stats
        event = pending.event
        queue = job.queue
        if event.kind == "progress" and queue:
            tail = queue[-1]
            if tail.event.kind == "progress" and not (job.busy and len(queue) == 1):
                if not tail.key_suffix:
                    self._forget_durable(tail.event)
                queue[-1] = pending
                stats.coalesced += 1
                return
        queue.append(pending)
        if not job.busy and not job.scheduled:
            self._schedule(job)

    def _forget_durable(self, event: JobEvent) -> None:
        if self._outbox is not None:
            self._outbox.remove(event)

    def _refuse(self, job_id: str) -> None:
        _remember(self._refused, job_id)

    def _retire(self, job: _Job) -> None:
        """Remove a job whose queue is empty, remembering what later events need."""
        del self._jobs[job.id]
        for child_id in job.dependents:  # cannot happen while its start is queued; be safe
            child = self._jobs.get(child_id)
            if child is not None and not child.busy:
                self._schedule(child)
        if job.started_acked and not job.finished:
            _remember(self._memory, job.id, (job.server_id, job.last_progress, True))

    def _warn(self, message: str, *args: Any) -> None:
        # A backend that is down produces one warning per job: keep the log readable.
        now = self._clock()
        if now - self._warned_at > 60.0:
            self._warned_at, self._warnings = now, 0
        self._warnings += 1
        if self._warnings <= 10:
            logger.warning(message, *args)
        elif self._warnings == 11:
            logger.warning("seenn: HTTP exporter: further warnings suppressed for a minute")

    # Scheduling (all under self._cond) ------------------------------------------------

    def _when(self, job: _Job) -> float | None:
        """When the job's head event may be sent; ``None`` while it waits for its parent."""
        head = job.queue[0].event
        if head.kind == "started" and job.parent_id is not None:
            parent = self._jobs.get(job.parent_id)
            if (parent is not None and parent.queue and not parent.started_acked
                    and parent.queue[0].event.kind == "started"):
                if job.id not in parent.dependents:
                    parent.dependents.append(job.id)
                return None
        due = max(job.due, self._paused_until)
        if head.kind == "progress" and not self._flushing:
            due = max(due, job.last_progress + self.progress_interval)
        return due

    def _schedule(self, job: _Job) -> None:
        when = self._when(job)
        if when is None:
            return
        job.scheduled = True
        if when > self._clock():
            self._timer_seq += 1
            heapq.heappush(self._timers, (when, self._timer_seq, job.id))
        else:
            self._ready.append(job.id)

    def _start_workers(self) -> None:
        idle = len(self._workers) - self._busy
        while len(self._workers) < self.max_concurrency and idle < max(1, len(self._ready)):
            worker = threading.Thread(target=self._work, name="seenn-http-exporter",
                                      daemon=True)
            self._workers.append(worker)
            worker.start()
            idle += 1

    def _next(self) -> tuple[_Job, _Pending] | None:
        """Wait for a job whose head event may be sent now; ``None`` when stopping."""
        while True:
            now = self._clock()
            timers = self._timers
            while timers and timers[0][0] <= now:
                self._ready.append(heapq.heappop(timers)[2])
            while self._ready:
                job = self._jobs.get(self._ready.popleft())
                if job is None or job.busy or not job.queue:
                    continue
                job.scheduled = False
                when = self._when(job)
                if when is None:
                    continue
                if when > now:
                    # Early (a stale timer, a pause): wait for the real time.
                    job.scheduled = True
                    self._timer_seq += 1
                    heapq.heappush(timers, (when, self._timer_seq, job.id))
                    continue
                job.busy = True
                self._busy += 1
                return job, job.queue[0]
            if self._stopping and not self._jobs:
                return None
            self._cond.wait(timers[0][0] - now if timers else None)

    def _work(self) -> None:
        while True:
            with self._cond:
                got = self._next()
            if got is None:
                return
            job, pending = got
            try:
                outcome, value = self._send(job, pending)
            except Exception as exc:  # a bug or an odd answer must not kill the thread
                outcome, value = "retry", exc
            with self._cond:
                self._busy -= 1
                job.busy = False
                try:
                    self._settle(job, pending, outcome, value)
                except Exception as exc:
                    logger.error("seenn: HTTP exporter: internal error for job %s: %r",
                                 job.id, exc, exc_info=exc)
                finally:
                    if job.queue:
                        if not job.scheduled:
                            self._schedule(job)
                    elif self._jobs.get(job.id) is job:
                        self._retire(job)
                    self._cond.notify_all()

    # Sending (no lock held) -----------------------------------------------------------

    def _send(self, job: _Job, pending: _Pending) -> tuple[str, Any]:
        event = pending.event
        path, body = self._request(job, event)
        try:
            key = f"{event.job_id}.{event.sequence}{pending.key_suffix}"
            answer = self._client._http.send_once("POST", path, json=body, idempotency_key=key)
        except (APIConnectionError, RateLimitError, ServerError) as error:
            return "retry", error
        except (ConflictError, NotFoundError) as error:
            if isinstance(error, NotFoundError) and event.sequence >= RESUMED_SEQUENCE_UNIT \
                    and not job.started_acked \
                    and self._clock() - pending.accepted < RESUMED_START_GRACE:
                # A job resumed from another process (seenn.propagation): the start that
                # process sent may not have reached the backend yet. Wait for it a while.
                return "retry", error
            return ("reject" if event.kind == "started" else "gone"), error
        except SeennError as error:
            if error.status_code is None or (200 <= error.status_code < 300):
                return "ok", None  # e.g. a 2xx that is not JSON: the backend took it
            return "reject", error
        return "ok", answer

    def _request(self, job: _Job, event: JobEvent) -> tuple[str, dict[str, Any]]:
        from seenn._client.transport import quote_id

        if event.kind == "started":
            body: dict[str, Any] = {"id": event.job_id, "jobType": event.job_type,
                                    "userId": event.user_id or ANONYMOUS_USER,
                                    "title": event.title or event.job_type}
            metadata = dict(event.metadata) if event.metadata else {}
            if self.include_trace_context and event.trace_id is not None:
                metadata.setdefault("traceId", event.trace_id)
                metadata.setdefault("spanId", event.span_id)
            if metadata:
                body["metadata"] = metadata
            if event.queue is not None:
                body["queue"] = event.queue.to_wire()
            if event.stage is not None:
                body["stage"] = event.stage.to_wire()
            if event.parent_id is not None and job.parent_id is not None:
                parent = self._jobs.get(event.parent_id)
                body["parentJobId"] = (parent.server_id if parent and parent.server_id
                                       else event.parent_id)
                if event.child_index is not None:
                    body["childIndex"] = event.child_index
            return "/jobs", body
        target = "/jobs/" + quote_id(job.server_id or event.job_id)
        if event.kind == "progress":
            body = {"progress": event.progress}
            if event.message is not None:
                body["message"] = event.message
            if event.stage is not None:
                body["stage"] = event.stage.to_wire()
            if event.queue is not None:
                body["queue"] = event.queue.to_wire()
            if event.metadata:
                body["metadata"] = dict(event.metadata)
            return target + "/progress", body
        if event.kind == "completed":
            body = {}
            if event.result is not None:
                body["result"] = event.result.to_wire()
            if event.message is not None:
                body["message"] = event.message
            return target + "/complete", body
        error = event.error or JobError("FAILED", "the job failed")
        wire = error.to_wire()
        if error.details and not self.include_traceback:
            details = {k: v for k, v in error.details.items() if k not in _PRIVATE_DETAILS}
            if details:
                wire["details"] = details
            else:
                wire.pop("details", None)
        body = {"error": wire}
        if event.retryable is not None:
            body["retryable"] = event.retryable
        return target + "/fail", body

    # Settling (under self._cond) ------------------------------------------------------

    def _settle(self, job: _Job, pending: _Pending, outcome: str, value: Any) -> None:
        event = pending.event
        stats = self.stats
        stats.requests += 1
        now = self._clock()
        if outcome == "retry":
            error: BaseException = value
            stats.retries += 1
            pending.attempts += 1
            retry_after = getattr(error, "retry_after", None)
            if retry_after is not None:
                delay = float(retry_after)
                if isinstance(error, RateLimitError):
                    self._paused_until = max(self._paused_until, now + delay)
            else:
                delay = self._random() * min(30.0, 0.5 * 2 ** (pending.attempts - 1))
            if self._stopping or now + delay - pending.accepted <= self.delivery_timeout:
                # Shutting down is no reason to give an event up: it stays queued (and
                # in the outbox) and shutdown() reports it.
                job.due = now + delay
                return
            stats.lost += 1
            logger.error("seenn: HTTP exporter: gave up on the %s event of job %s after %d "
                         "attempts over %.0f s: %s", event.kind, event.job_id,
                         pending.attempts, now - pending.accepted, error)
            if event.kind == "started":
                self._drop_job(job, "its start could not be delivered")
                return
        elif outcome == "reject":
            stats.rejected += 1
            self._warn("seenn: HTTP exporter: the backend refused the %s event of job %s: %s",
                       event.kind, event.job_id, value)
            if event.kind == "started":
                self._drop_job(job, "its start was refused")
                return
        elif outcome == "gone":
            # 404: the backend does not know the job (expired, or its start was lost);
            # 409: it is finished already, e.g. a replay of a call that went through.
            if isinstance(value, ConflictError) and (event.is_terminal or pending.key_suffix):
                stats.delivered += 1
            else:
                stats.rejected += 1
                self._warn("seenn: HTTP exporter: the %s event of job %s was not applied: %s",
                           event.kind, event.job_id, value)
        else:
            stats.delivered += 1
            if event.kind == "started":
                job.started_acked = True
                server_id = value.get("id") if isinstance(value, Mapping) else None
                if isinstance(server_id, str) and server_id != event.job_id:
                    job.server_id = server_id
                for child_id in job.dependents:
                    child = self._jobs.get(child_id)
                    if child is not None and not child.busy:
                        self._schedule(child)
                job.dependents.clear()
            elif event.kind == "progress":
                job.last_progress = now
        if event.is_terminal:
            job.finished = True
        job.due = 0.0
        job.queue.popleft()
        if not pending.key_suffix:
            self._forget_durable(event)

    def _drop_job(self, job: _Job, why: str) -> None:
        job.queue.popleft()
        dropped = len(job.queue)
        self.stats.rejected += dropped
        job.queue.clear()
        self._refuse(job.id)
        if self._outbox is not None:
            self._outbox.remove_job(job.id)
        if dropped:
            logger.info("seenn: HTTP exporter: dropped %d later event(s) of job %s: %s",
                        dropped, job.id, why)
        for child_id in job.dependents:
            child = self._jobs.get(child_id)
            if child is not None and not child.busy:
                child.parent_id = None  # its parent will never exist: start it on its own
                self._schedule(child)
        job.dependents.clear()

    # Flush and shutdown ---------------------------------------------------------------

    def __enter__(self) -> HTTPExporter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    @property
    def pending(self) -> int:
        """Events not yet delivered (or given up on)."""
        with self._cond:
            return sum(len(job.queue) for job in self._jobs.values())

    def force_flush(self, timeout: float = 30.0) -> bool:
        """Send everything pending now (progress too) and wait up to ``timeout`` seconds.

        Returns:
            ``True`` if nothing is left undelivered.
        """
        deadline = self._clock() + max(timeout, 0.0)
        with self._cond:
            self._flushing += 1
            try:
                for job in self._jobs.values():
                    if job.queue and not job.busy and job.queue[0].event.kind == "progress":
                        self._ready.append(job.id)  # held back by the progress rate only
                self._cond.notify_all()
                while self._jobs:
                    left = deadline - self._clock()
                    if left <= 0:
                        return False
                    self._cond.wait(min(left, 0.05))
                return True
            finally:
                self._flushing -= 1

    def shutdown(self, timeout: float = 30.0) -> None:
        """Deliver what is pending within ``timeout`` seconds, then stop.

        What could not be delivered is reported in one log line; with an outbox it
        stays there for the next start.
        """
        with self._cond:
            if self._closed:
                return
        deadline = self._clock() + max(timeout, 0.0)
        delivered = self.force_flush(timeout)
        with self._cond:
            self._closed = True
            self._stopping = True
            left = sum(len(job.queue) for job in self._jobs.values())
            jobs = sum(1 for job in self._jobs.values() if job.queue)
            if left and self._outbox is None:
                self.stats.lost += left
            self._jobs.clear()  # what is left stays in the outbox, if there is one
            self._cond.notify_all()
            workers = list(self._workers)
        if not delivered and left:
            where = (f"; they stay in the outbox {self._outbox_path}"
                     if self._outbox is not None else "")
            logger.warning("seenn: HTTP exporter shut down with %d event(s) of %d job(s) "
                           "undelivered%s", left, jobs, where)
        # Threads blocked in a call finish it in the background (they are daemons and
        # touch nothing closed: the outbox ignores writes once closed).
        grace = self._clock() + 0.5
        for worker in workers:
            worker.join(max(0.0, min(deadline, grace) - self._clock()))
        if self._outbox is not None:
            self._outbox.close()
        if self._owns_client and not any(worker.is_alive() for worker in workers):
            self._client.close()
