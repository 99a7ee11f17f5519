"""``HTTPExporter``: job events to a Seenn-compatible backend, in order, never blocking.

This module owns the exporter's face and lifecycle: its settings, the replay
from the outbox at start, ``export``/``persist``, ``force_flush``/``shutdown``
and a fresh start after ``os.fork()``. The machinery is in ``delivery``, the
REST mapping in ``wire``, the SQLite outbox in ``outbox`` and the files many
processes share one setting with (and adopt when a process ends) in ``family``.

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
* Memory is bounded by ``max_pending_jobs``. Past it, with an outbox, new
  jobs wait on disk and are read back as memory frees up; without one they are
  dropped whole (terminal events last), counted in ``stats.dropped``, logged,
  and the next ``force_flush()`` returns ``False``.
* An answer the client cannot use (a 2xx that is not the backend's JSON, or
  one over the client's size cap) is retried like a 5xx and logged.
* Log lines about the same trouble (a full queue, a refusing backend, a broken
  outbox) go out at most once a minute each, with the count of the others.
* A job running in this process that has had no call delivered for
  ``heartbeat_interval`` gets a heartbeat: a progress call repeating what the
  backend shows, so a backend's stale limit does not end it (``heartbeat``).
  ``stale_after`` sends the job's stale limit with its start.
* A backend that offers the ``events`` extension (``GET /v1/healthz``, asked once)
  gets the calls of many jobs in one ``POST /v1/events`` (``max_batch_events``),
  each job's call with its own body and key and settled by its own result; a
  backend without it gets one call per event.
* When a job type starts, its ETA history is fetched (``GET /v1/eta/{jobType}``,
  at most once per ``eta_history_interval``) on a thread of its own, for
  ``TrackedJob.eta`` and the console (``prior``).
"""

from __future__ import annotations

import logging
import math
import os
import random
import threading
import time
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING

from seenn._core.pipeline import ExportResult
from seenn.exporters._http.delivery import DeliveryCore
from seenn.exporters._http.family import ADOPT_INTERVAL, Family, adopt_dead, family_of, open_own
from seenn.exporters._http.heartbeat import resumes_here
from seenn.exporters._http.prior import DEFAULT_INTERVAL, Priors
from seenn.exporters._http.state import DeliveryStats

if TYPE_CHECKING:
    from seenn._client.client import SeennClient
    from seenn._core.events import JobEvent
    from seenn.exporters._http.outbox import Outbox

__all__ = ["HTTPExporter"]

logger = logging.getLogger("seenn")


_live: weakref.WeakSet[HTTPExporter] = weakref.WeakSet()
_inherited: list[Outbox] = []  # outboxes a forked child must leave alone
_held_over_fork: list[threading.Lock] = []


def _before_fork() -> None:
    # No outbox call may be half done in another thread when the process forks: the
    # child opens SQLite files of its own, and fork() leaves SQLite's mutexes as they were.
    for exporter in list(_live):
        for lock in exporter._outbox_locks():
            lock.acquire()
            _held_over_fork.append(lock)


def _after_fork_in_parent() -> None:
    while _held_over_fork:
        _held_over_fork.pop().release()


def _after_fork_in_child() -> None:
    _after_fork_in_parent()
    for exporter in list(_live):
        exporter._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                        after_in_child=_after_fork_in_child)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class HTTPExporter(DeliveryCore):
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
        outbox: Where undelivered events are kept across crashes and restarts. A
            directory (one that exists, or a path ending in ``/``, made ``0700``) is
            the setting for many processes: each keeps its own SQLite file there, and
            adopts the files of processes that have ended. A file path serves one
            process; another process finding it in use keeps its own file beside it.
        max_outbox_events: The outbox's size cap: beyond it, progress and new jobs
            are kept in memory only (and logged); terminal events are always written.
        delivery_timeout: How long an event may keep failing before it counts as lost.
        request_timeout: Seconds one HTTP attempt may take.
        max_pending_jobs: How many jobs may have undelivered events in memory (about
            1.5 KB each for a short job: the default holds a burst of 50,000 jobs, which
            a backend answering 1,000 calls a second absorbs in under two minutes).
            Past it, new jobs wait in the outbox if there is one, else are dropped.
        heartbeat_interval: Seconds a running job of this process may go without a
            delivered call before the exporter sends a heartbeat (a progress call
            repeating what the backend shows); ``None`` or ``0`` sends none.
        stale_after: The stale limit to ask of the backend, in seconds (10 to
            2,592,000): sent as ``staleAfterSeconds`` with every start and with the
            first progress call of a job resumed here. ``None`` never sends the field.
        eta_history_interval: Seconds between two fetches of a job type's ETA history
            (``GET /v1/eta/{jobType}``, made on a thread of the exporter when a job of
            the type starts), which ``TrackedJob.eta`` and the console weigh a job's
            own pace against; ``None`` or ``0`` fetches none.
        max_batch_events: The most calls one ``POST /v1/events`` carries (0 to 500),
            when the backend offers that extension (fewer if it says so); 0 or 1 never
            asks and sends one call per event.

    Raises:
        ValidationError: An option is out of range (the error names it).
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
        max_pending_jobs: int = 50_000,
        heartbeat_interval: float | None = 60.0,
        stale_after: float | None = None,
        eta_history_interval: float | None = DEFAULT_INTERVAL,
        max_batch_events: int = 100,
    ) -> None:
        from seenn._client.client import SeennClient
        from seenn._core.validation import MAX_STALE_AFTER, MIN_STALE_AFTER, fail

        if max_concurrency < 1:
            fail("max_concurrency", "must be at least 1")
        if progress_interval < 0:
            fail("progress_interval", "must not be negative")
        if delivery_timeout <= 0:
            fail("delivery_timeout", "must be positive")
        if max_pending_jobs < 1:
            fail("max_pending_jobs", "must be at least 1")
        if isinstance(max_batch_events, bool) or not isinstance(max_batch_events, int) \
                or not 0 <= max_batch_events <= 500:
            # Each result is a whole job (metadata up to 10 KB): 500 of them stay well
            # under the client's 8 MiB cap on an answer.
            fail("max_batch_events", "must be an integer from 0 to 500")
        if heartbeat_interval is not None and not (
                _is_number(heartbeat_interval) and math.isfinite(heartbeat_interval)
                and heartbeat_interval >= 0):
            fail("heartbeat_interval", "must be a finite number of seconds, or None (or 0) "
                 "to send no heartbeats")
        if eta_history_interval is not None and not (
                _is_number(eta_history_interval) and math.isfinite(eta_history_interval)
                and eta_history_interval >= 0):
            fail("eta_history_interval", "must be a finite number of seconds, or None (or 0) "
                 "to fetch no ETA history")
        if stale_after is not None and not (
                _is_number(stale_after) and MIN_STALE_AFTER <= stale_after <= MAX_STALE_AFTER):
            fail("stale_after", f"must be a number of seconds from {MIN_STALE_AFTER} to "
                 f"{MAX_STALE_AFTER:,}, or None")
        self._owns_client = client is None
        self._client = client if client is not None else SeennClient(
            api_key, base_url=base_url, timeout=request_timeout, max_retries=0, deadline=None)
        self.include_traceback = include_traceback
        self.include_trace_context = include_trace_context
        self.progress_interval = progress_interval
        self.max_concurrency = max_concurrency
        self.delivery_timeout = delivery_timeout
        self.max_pending_jobs = max_pending_jobs
        self.max_batch_events = max_batch_events
        self.heartbeat_interval = float(heartbeat_interval) if heartbeat_interval else None
        self.stale_after = int(stale_after) if stale_after is not None else None
        self.eta_history_interval = (float(eta_history_interval) if eta_history_interval
                                     else None)
        if self.stale_after is not None and self.heartbeat_interval is not None \
                and self.stale_after < 2 * self.heartbeat_interval:
            logger.warning("seenn: HTTP exporter: stale_after=%s is less than twice "
                           "heartbeat_interval=%s: a quiet job may be ended as stale between "
                           "two heartbeats", self.stale_after, heartbeat_interval)
        self.stats = DeliveryStats()
        self._outbox_path = None
        self._max_outbox_events = max_outbox_events
        self._outbox = None
        self._family: Family | None = None
        self._adopt_lock = threading.Lock()  # one look for ended processes' files at a time
        self._adopt_at = 0.0  # when export() looks again
        # Seams for tests.
        self._clock = time.monotonic
        self._random = random.random
        self._reset()
        self._priors = self._new_priors()
        if outbox is not None:
            try:
                self._family = family_of(outbox)
                self._outbox = open_own(self._family, max_outbox_events, self._log)
            except BaseException:
                if self._owns_client:
                    self._client.close()
                raise
            self._outbox_path = self._outbox.path
            self._recover()
        _live.add(self)

    def _new_priors(self) -> Priors | None:
        interval = self.eta_history_interval
        if interval is None:
            return None
        return Priors(lambda: self._client, lambda: self.stats, interval,
                      lambda: self._clock())

    # The outbox: replay, adoption, fork -----------------------------------------------

    def _recover(self) -> None:
        """File for delivery what the outbox holds and what ended processes left beside it."""
        outbox, family = self._outbox, self._family
        if outbox is None or family is None:
            return
        stored = outbox.load()
        if stored:
            logger.info("seenn: HTTP exporter: replaying %d undelivered event(s) from %s",
                        len(stored), outbox.path)
        with self._adopt_lock:
            self._adopt_at = self._clock() + ADOPT_INTERVAL
            stored += adopt_dead(family, outbox, self._log)
        self._file_stored(stored)

    def _adopt_due(self) -> None:
        """Adopt the files of processes that ended since the last look (once a minute)."""
        if not self._adopt_lock.acquire(blocking=False):
            return  # another thread is looking
        try:
            outbox, family = self._outbox, self._family
            if self._clock() < self._adopt_at or outbox is None or family is None:
                return
            self._adopt_at = self._clock() + ADOPT_INTERVAL
            adopted = adopt_dead(family, outbox, self._log)
        finally:
            self._adopt_lock.release()
        self._file_stored(adopted)

    def _file_stored(self, events: list[JobEvent]) -> None:
        """File events that are in the outbox already (read back or adopted)."""
        if not events:
            return
        with self._cond:
            if self._closed:
                return  # they stay in the outbox for the next start
            for event in events:
                self._accept(event, durable=True)
            self.stats.replayed += len(events)
            self._start_workers()
            self._cond.notify_all()

    def _outbox_locks(self) -> list[threading.Lock]:
        """The locks held over ``fork()``, in the order they are taken."""
        outbox = self._outbox
        return [self._adopt_lock] + ([outbox._lock] if outbox is not None else [])

    def _after_fork(self) -> None:
        # The parent's threads, locks and sockets are not the child's: start over.
        closed = self._closed
        self._reset()
        self.stats = DeliveryStats()
        self._adopt_lock = threading.Lock()
        self._priors = None if closed else self._new_priors()
        if closed:
            self._closed = self._stopping = True
            return
        if self._owns_client:
            self._client = type(self._client)(
                self._client._http._api_key, base_url=self._client.base_url,
                base_path=self._client.base_path, timeout=self._client.timeout,
                max_retries=0, deadline=None)
        if self._outbox is not None:
            # The parent keeps its outbox and its claim on it. Never close the inherited
            # connection: SQLite could take the parent's WAL for its own and checkpoint
            # or delete it (abandon() closes only our copy of the lock's descriptor).
            self._outbox.abandon()
            _inherited.append(self._outbox)
            self._outbox = None
            self._outbox_path = None
        if self._family is not None:
            # A file of its own in the family: a directory's, or one beside a file path
            # (whose file the parent holds). The parent's file is locked by the parent,
            # so the child never adopts it.
            try:
                self._outbox = open_own(self._family, self._max_outbox_events, self._log)
            except Exception as exc:  # the fork hook is no place to raise
                logger.warning("seenn: HTTP exporter: a forked process cannot open an outbox "
                               "of its own in %s (%s); its events are kept in memory only",
                               self._family.directory, exc)
                return
            self._outbox_path = self._outbox.path
            self._recover()

    # The processor side ---------------------------------------------------------------

    def on_hand_off(self, job_id: str) -> None:
        """Stop the heartbeats of a job that goes on in another process.

        Called through the processor when the block of a job that was handed off
        (``TrackedJob.hand_off()``) is left. It never waits: the delivery threads
        take it from a queue.
        """
        if self.heartbeat_interval is not None and not self._closed:
            self._hand_offs.append(job_id)

    @property
    def failing(self) -> bool:
        """Whether the backend's last answer was one to retry (down, 5xx, unreadable).

        A process about to exit reads this to decide how long to wait for
        delivery (``seenn.integrations`` flush for at most a moment then).
        """
        return not self._answering

    @property
    def durable(self) -> bool:
        """Whether events written now reach disk: an outbox is open and its last write worked.

        ``BatchProcessor`` reads this when its queue is full: a job it has no room
        for is left to the outbox (see :meth:`spilled`) rather than dropped.
        """
        outbox = self._outbox
        return outbox is not None and not outbox.failing and not self._closed

    def spilled(self, job_ids: Sequence[str]) -> None:
        """Deliver jobs a processor had no room for from the outbox, where their start is.

        Called by ``BatchProcessor`` from its worker thread, before it exports any
        later event of those jobs; they are read back as memory allows.
        """
        with self._cond:
            if self._closed or self._outbox is None:
                return  # their rows stay in the outbox for the next start
            self._restore(job_ids)
            self._start_workers()
            self._cond.notify_all()

    def persist(self, event: JobEvent) -> bool:
        """Write a start or terminal event to the outbox now (called inline by the processor).

        Without an outbox this does nothing. It is what makes a job's start and end
        durable before ``track()`` returns, whatever the processor's queue holds.

        Returns:
            ``False`` if the outbox did not take the event (it is full or failing): a
            processor must not leave that job to the outbox (see :meth:`spilled`).
        """
        if self._outbox is not None and event.kind != "progress" and not self._closed:
            return self._outbox.add(event)
        return True

    def export(self, events: Sequence[JobEvent]) -> ExportResult:
        """File the events for delivery; returns at once (no network I/O here)."""
        with self._cond:
            if self._closed:
                return ExportResult.FAILURE
            for event in events:
                self._accept(event, durable=False)
            self._start_workers()
            self._cond.notify_all()
        priors = self._priors
        if priors is not None:
            for event in events:
                if event.kind == "started" or resumes_here(event):
                    priors.want(event.job_type)
        if self._family is not None and self._clock() >= self._adopt_at:
            # On the processor's worker thread, once a minute: a process that ended
            # after this one started leaves its file to whoever looks first.
            self._adopt_due()
        return ExportResult.SUCCESS

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
            ``True`` if nothing is left undelivered and nothing was dropped or lost
            (``stats.dropped``, ``stats.lost``) since the last ``force_flush()``.
        """
        deadline = self._clock() + max(timeout, 0.0)
        with self._cond:
            self._flushing += 1
            try:
                for job in self._jobs.values():
                    if job.queue and not job.busy and job.queue[0].event.kind == "progress":
                        self._ready.append(job.id)  # held back by the progress rate only
                self._cond.notify_all()
                while self._jobs or self._on_disk:
                    left = deadline - self._clock()
                    if left <= 0:
                        return False
                    self._cond.wait(min(left, 0.05))
                return self._report_drops()
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
            jobs = sum(1 for job in self._jobs.values() if job.queue) + len(self._on_disk)
            if left and self._outbox is None:
                self.stats.lost += left
            self._jobs.clear()  # what is left stays in the outbox, if there is one
            self._on_disk.clear()
            self._cond.notify_all()
            workers = list(self._workers)
        if not delivered and jobs:
            where = (f"; they stay in the outbox {self._outbox_path}"
                     if self._outbox is not None else "")
            logger.warning("seenn: HTTP exporter shut down with %d event(s) of %d job(s) "
                           "undelivered%s", left, jobs, where)
        # Threads blocked in a call finish it in the background (they are daemons and
        # touch nothing closed: the outbox ignores writes once closed).
        grace = self._clock() + 0.5
        for worker in workers:
            worker.join(max(0.0, min(deadline, grace) - self._clock()))
        priors = self._priors
        if priors is not None:
            priors.close(max(0.0, min(deadline, grace) - self._clock()))
        if self._outbox is not None:
            self._outbox.close()
        if self._owns_client and not any(worker.is_alive() for worker in workers) \
                and not (priors is not None and priors.alive()):
            self._client.close()
