"""The delivery core of ``HTTPExporter``: per-job queues, scheduling, delivery threads, settling.

Events are filed into per-job queues under one lock; a small pool of threads
takes each job's head event when it is due, sends it without the lock, then
settles the outcome (acknowledge, retry with backoff, reject or give up).

Memory holds at most ``max_pending_jobs`` jobs. Past that, with an outbox, a
new job waits on disk only (``_on_disk``) and is read back when a job leaves
memory; without one it is dropped whole, counted and logged.

Jobs live in this process that have gone quiet get heartbeats (``heartbeat``):
their entries share the timer heap, and the heartbeat is sent like an event.

A backend that offers the ``events`` extension (its ``GET /v1/healthz`` lists it,
asked once, before the first call) takes the head events of many jobs in one
``POST /v1/events``: a delivery thread claims up to ``max_batch_events`` jobs whose
head is due, sends their calls as the batch's entries (same bodies, same keys), and
settles each job with its own result exactly as if its single call had been
answered so. Each job still has one call in flight at a time, so order per job,
parents before children, retries and keys are those of single calls. A 404 or 405
from ``/v1/events`` turns batching off for good (the calls go singly at once).
"""

from __future__ import annotations

import heapq
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from seenn._core.events import RESUMED_SEQUENCE_UNIT
from seenn._core.pipeline import RateLimitedLog
from seenn.errors import (
    APIConnectionError,
    ConflictError,
    NotFoundError,
    RateLimitError,
    SeennError,
    ServerError,
)
from seenn.exporters._http import wire
from seenn.exporters._http.heartbeat import Heartbeats, Remembered, resumes_here
from seenn.exporters._http.links import Links, refuses_parent
from seenn.exporters._http.state import Job, Pending, remember

if TYPE_CHECKING:
    from seenn._client.client import SeennClient
    from seenn._core.events import JobEvent
    from seenn.exporters._http.outbox import Outbox
    from seenn.exporters._http.state import DeliveryStats

__all__ = ["RESUMED_START_GRACE", "DeliveryCore"]

logger = logging.getLogger("seenn")

RESUMED_START_GRACE = 60.0
"""Seconds a resumed job's events retry a 404 (their start comes from another process)."""

UNREADABLE = frozenset({"INVALID_RESPONSE", "RESPONSE_TOO_LARGE"})
"""Error codes of a 2xx answer the client could not use: the call may not have been applied."""

_PROBE = "probe"

PROBE_AGAIN = 60.0
"""Seconds before the backend's extensions are asked again after it did not answer."""


def _batch_shape(answer: Any) -> str | None:
    """``None`` if ``answer`` looks like a ``POST /v1/events`` answer, else what was expected."""
    results = answer.get("results") if isinstance(answer, Mapping) else None
    return None if isinstance(results, list) else 'an object with a "results" list'


class DeliveryCore(Heartbeats, Links):
    """The machinery of :class:`HTTPExporter`, which sets what is declared here."""

    include_traceback: bool
    include_trace_context: bool
    progress_interval: float
    heartbeat_interval: float | None
    stale_after: int | None
    max_concurrency: int
    delivery_timeout: float
    max_pending_jobs: int
    max_batch_events: int
    stats: DeliveryStats
    _client: SeennClient
    _outbox: Outbox | None
    _outbox_path: str | None
    _clock: Callable[[], float]
    _random: Callable[[], float]

    def _reset(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._jobs: dict[str, Job] = {}
        self._ready: deque[str] = deque()
        self._timers: list[tuple[float, int, str]] = []
        self._timer_seq = 0
        self._refused: dict[str, None] = {}  # jobs the backend refused: later events dropped
        self._dropped_jobs: dict[str, None] = {}  # no room and no outbox: later events dropped
        # Jobs waiting in the outbox for room in memory, oldest first; then what was read
        # back of each (the highest sequence), so the same event coming from the
        # processor later is not sent twice.
        self._on_disk: dict[str, None] = {}
        self._read_back: dict[str, int] = {}
        # What outlives a job's queue between its events (bounded): the backend's id
        # for it, when its last progress call went, whether its start was acknowledged,
        # and, for a job live here, what its heartbeat needs.
        self._memory: dict[str, Remembered] = {}
        self._answering = True  # the backend's last answer was not a failure to retry
        self._reset_beats()
        self._reset_links()
        self._workers: list[threading.Thread] = []
        self._busy = 0
        self._paused_until = 0.0
        self._stopping = False
        self._closed = False
        self._flushing = 0
        self._drops_at_flush = 0  # dropped + lost when force_flush() last reported
        self._log = RateLimitedLog()
        # POST /v1/events: how many calls one may carry (0: single calls), and when to
        # ask the backend whether it offers it (None: never again).
        self._batch_max = 0
        self._probe_at: float | None = 0.0 if self.max_batch_events > 1 else None
        self._probe_lock = threading.Lock()

    def _accept(self, event: JobEvent, *, durable: bool) -> None:
        job_id = event.job_id
        read = self._read_back.get(job_id)
        if read is not None and event.sequence <= read:
            return  # read back from the outbox already (persisted inline, exported since)
        stats = self.stats
        stats.accepted += 1
        if job_id not in self._jobs:
            if job_id in self._refused:
                stats.rejected += 1
                self._forget_durable(event)
                return
            if job_id in self._dropped_jobs:
                stats.dropped += 1
                return
            parent_id = event.parent_id if event.kind == "started" else None
            if job_id in self._on_disk or parent_id in self._on_disk:
                # Behind its own start, or its parent's: in order, on disk too.
                if not self._spill(event, durable):
                    # The outbox failed to take it: read what it holds back now.
                    for waiting in (parent_id, job_id):
                        if waiting in self._on_disk:
                            self._read_job(waiting)
                    self._file(event, durable=True)
                return
            # Terminal events may go over the cap (their job's start was delivered or
            # is lost); only at twice the cap do they go too.
            limit = self.max_pending_jobs * (2 if event.is_terminal else 1)
            if len(self._jobs) >= limit:
                self._overflow(event, durable)
                return
        self._file(event, durable)
        if not durable and self.heartbeat_interval is not None:
            self._note(self._jobs[job_id], event)  # from export(): this process's own job

    def _overflow(self, event: JobEvent, durable: bool) -> None:
        """Memory is full: keep the job in the outbox, or else drop it whole."""
        job_id = event.job_id
        if self._outbox is not None and self._spill(event, durable):
            self._log.warning("spilled", "seenn: HTTP exporter: %d jobs are waiting for the "
                              "backend; job %s waits in the outbox %s until there is room",
                              len(self._jobs), job_id, self._outbox_path)
            return
        self.stats.dropped += 1
        if event.kind == "started":
            remember(self._dropped_jobs, job_id)
        self._log.warning("dropped", "seenn: HTTP exporter: %d jobs are waiting for the "
                          "backend; dropped the %s event of job %s (counted in "
                          "stats.dropped)", len(self._jobs), event.kind, job_id)

    def _spill(self, event: JobEvent, durable: bool) -> bool:
        """Leave ``event`` in the outbox until its job is read back; ``False`` if it cannot."""
        outbox = self._outbox
        if outbox is None or not (durable or outbox.add(event)):
            return False
        if event.job_id not in self._on_disk:
            remember(self._on_disk, event.job_id)
        self.stats.spilled += 1
        return True

    def _restore(self, job_ids: Iterable[str]) -> None:
        """Take jobs whose start is in the outbox only (a processor had no room for them)."""
        for job_id in job_ids:
            if job_id not in self._jobs:
                remember(self._on_disk, job_id)
                self.stats.spilled += 1
        self._refill()

    def _refill(self) -> None:
        """Read jobs waiting in the outbox back into memory while there is room."""
        on_disk = self._on_disk
        while on_disk and len(self._jobs) < self.max_pending_jobs:
            self._read_job(next(iter(on_disk)))

    def _read_job(self, job_id: str) -> None:
        """Move a job waiting in the outbox into memory: what was not read back yet."""
        del self._on_disk[job_id]
        outbox = self._outbox
        events = (outbox.job_events(job_id, self._read_back.get(job_id, -1))
                  if outbox is not None else [])
        if events:
            remember(self._read_back, job_id, events[-1].sequence)
        for event in events:
            self._file(event, durable=True)

    def _file(self, event: JobEvent, durable: bool) -> None:
        """Put ``event`` in its job's queue (making the job if needed) and schedule it."""
        job_id = event.job_id
        job = self._jobs.get(job_id)
        if job is None:
            parent_id = event.parent_id if event.kind == "started" else None
            if parent_id in self._refused:
                parent_id = None  # its parent will never exist: start it on its own
            job = Job(job_id, parent_id=parent_id)
            self._note_child(job)
            remembered = self._memory.pop(job_id, None)
            if remembered is not None:
                (job.server_id, job.last_progress, job.started_acked, job.beat,
                 job.metadata) = remembered
            self._jobs[job_id] = job
        if not durable and self._outbox is not None:
            self._outbox.add(event)  # if it cannot, it says so; memory has the event
        if event.is_terminal and self._stale(job, event):
            # complete and fail carry no progress or stage: bring them up to date first.
            self._enqueue(job, Pending(replace(event, kind="progress", status="running"),
                                       self._clock(), key_suffix="p"))
        if event.kind != "started":
            job.shown = (event.progress, event.stage, event.message)
        elif event.stage is not None:
            job.shown = (0, event.stage, None)
        if event.metadata:
            job.metadata = event.metadata
        self._enqueue(job, Pending(event, self._clock()))

    @staticmethod
    def _stale(job: Job, event: JobEvent) -> bool:
        """Whether the backend would end the job showing less than ``event`` says."""
        if event.metadata and event.metadata is not job.metadata:
            # Metadata given with a progress call that a processor dropped for the end
            # (the end supersedes it): only a progress call carries metadata.
            return True
        progress, stage, message = job.shown
        if event.kind == "completed":
            return event.stage != stage
        return (event.progress, event.stage, event.message) != (progress, stage, message)

    def _enqueue(self, job: Job, pending: Pending) -> None:
        stats = self.stats
        event = pending.event
        queue = job.queue
        if queue and not job.busy and queue[-1].key_suffix[:1] == "h":
            # A heartbeat not sent yet (waiting to retry): a real call says more.
            queue.pop()
            job.due = 0.0
            job.scheduled = False
        if event.kind == "progress" and queue:
            tail = queue[-1]
            if tail.event.kind == "progress" and not (job.busy and len(queue) == 1):
                if not tail.key_suffix:
                    self._forget_durable(tail.event)
                # The replaced call may have been a resumed job's first (see _request).
                pending.resumed = tail.resumed or resumes_here(tail.event)
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
        remember(self._refused, job_id)

    def _retire(self, job: Job) -> None:
        """Remove a job whose queue is empty, remembering what later events need."""
        del self._jobs[job.id]
        for child_id in job.dependents:  # cannot happen while its start is queued; be safe
            child = self._jobs.get(child_id)
            if child is not None and not child.busy:
                self._schedule(child)
        if (job.started_acked and not job.finished) or job.beat is not None:
            self._went_quiet(job)
            remember(self._memory, job.id, (job.server_id, job.last_progress,
                                            job.started_acked, job.beat, job.metadata))

    def _report_drops(self) -> bool:
        """``True`` unless events were dropped or lost since the last report."""
        drops = self.stats.dropped + self.stats.lost
        clean = drops == self._drops_at_flush
        self._drops_at_flush = drops
        return clean

    # Scheduling (all under self._cond) ------------------------------------------------

    def _when(self, job: Job) -> float | None:
        """When the job's head event may be sent; ``None`` while it waits for another job.

        A child's start waits for its parent's start, and a parent's end for the
        starts of its children that were filed before it.
        """
        if self._waits_for_family(job):
            return None
        head = job.queue[0].event
        due = max(job.due, self._paused_until)
        if head.kind == "progress" and not self._flushing:
            due = max(due, job.last_progress + self.progress_interval)
        return due

    def _schedule(self, job: Job) -> None:
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

    def _next(self) -> tuple[Job, Pending] | str | None:
        """Wait for a job whose head event may be sent now; ``None`` when stopping.

        ``_PROBE`` (before taking any job) when the backend's extensions are to be asked.
        """
        jobs = self._jobs
        while True:
            probe_at = self._probe_at
            if probe_at is not None and self._clock() >= probe_at \
                    and not (self._stopping and not self._jobs):
                return _PROBE
            if self._hand_offs:
                self._take_hand_offs()
            now = self._clock()
            timers = self._timers
            beats = 0
            while timers and timers[0][0] <= now:
                _, timer, job_id = heapq.heappop(timers)
                job = jobs.get(job_id)
                if job is None:
                    if self._beat(job_id, timer, now):
                        beats += 1
                elif job.beat is not None and job.beat.timer == timer:
                    job.beat.timer = 0  # its heartbeat's, but it is busy: a new one when quiet
                else:
                    self._ready.append(job_id)
            if beats > 1:
                self._start_workers()
            claimed = self._claim(now)
            if claimed is not None:
                return claimed
            if self._stopping and not self._jobs:
                return None
            self._cond.wait(timers[0][0] - now if timers else None)

    def _claim(self, now: float) -> tuple[Job, Pending] | None:
        """Take the next job of the ready queue whose head may be sent now, marked busy."""
        jobs = self._jobs
        while self._ready:
            job = jobs.get(self._ready.popleft())
            if job is None or job.busy or not job.queue:
                continue
            job.scheduled = False
            when = self._when(job)
            if when is None:
                continue
            if when > now and self._flushing and job.queue[0].key_suffix[:1] == "h":
                # A heartbeat waiting to retry: not worth a flush's wait.
                del job.queue[0]
                job.due = 0.0
                self._retire(job)
                if self._on_disk:
                    self._refill()
                self._cond.notify_all()
                continue
            if when > now:
                # Early (a stale timer, a pause): wait for the real time.
                job.scheduled = True
                self._timer_seq += 1
                heapq.heappush(self._timers, (when, self._timer_seq, job.id))
                continue
            job.busy = True
            self._busy += 1
            return job, job.queue[0]
        return None

    def _work(self) -> None:
        while True:
            with self._cond:
                got = self._next()
                if got is None:
                    return
                batch = [] if isinstance(got, str) else [got]
                most = self._batch_max
                while batch and len(batch) < most:
                    more = self._claim(self._clock())
                    if more is None:
                        break
                    batch.append(more)
            if not batch:
                # Before the first call (and again a while after a backend that did
                # not answer): whether calls may go in batches. Every delivery thread
                # comes here first, and waits for the one that asks.
                self._probe()
                continue
            calls, batches = 1, 0
            try:
                if len(batch) == 1:
                    outcomes = [self._send(*batch[0])]
                else:
                    outcomes, calls, batches = self._send_batch(batch)
            except Exception as exc:  # a bug or an odd answer must not kill the thread
                outcomes = [("unreadable", exc)] * len(batch)
            with self._cond:
                for (job, pending), (outcome, value) in zip(batch, outcomes, strict=True):
                    self._finish(job, pending, outcome, value)
                # _settle counts a call per event; a batch was fewer calls.
                self.stats.requests += calls - len(batch)
                self.stats.batches += batches
                self._cond.notify_all()

    def _finish(self, job: Job, pending: Pending, outcome: str, value: Any) -> None:
        """Settle a sent call and put its job back in line (under the lock)."""
        self._busy -= 1
        job.busy = False
        # A 404 retried while a job's start is on its way from another
        # process is an answer: only a backend that does not answer is failing.
        self._answering = outcome != "unreadable" and not (
            outcome == "retry"
            and isinstance(value, (APIConnectionError, RateLimitError, ServerError)))
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
                if self._on_disk:
                    self._refill()

    # Sending (no lock held) -----------------------------------------------------------

    def _probe(self) -> None:
        """Ask the backend once whether it offers ``POST /v1/events`` (``GET /healthz``).

        Any answer but a listing of the extension means single calls: for good when the
        backend answered, until ``PROBE_AGAIN`` from now when it did not.
        """
        with self._probe_lock:
            at = self._probe_at
            if at is None or self._clock() < at:
                return  # another delivery thread asked meanwhile
            try:
                answer = self._client._http.send_once("GET", "/healthz")
            except SeennError as error:
                down = isinstance(error, (APIConnectionError, RateLimitError, ServerError)) \
                    or error.code in UNREADABLE
                self._probe_at = self._clock() + PROBE_AGAIN if down else None
                return
            except Exception:  # an odd answer: never a reason to stop delivering
                self._probe_at = None
                return
            limits = wire.events_limits(answer)
            if limits is not None:
                self._batch_max = min(limits[0], self.max_batch_events)
            self._probe_at = None

    @staticmethod
    def _key(pending: Pending) -> str:
        suffix = pending.key_suffix
        if pending.renewals:
            suffix += f"n{pending.renewals}"
        return wire.idempotency_key(pending.event, suffix)

    def _send_batch(self, batch: Sequence[tuple[Job, Pending]]
                    ) -> tuple[list[tuple[str, Any]], int, int]:
        """Send the head calls of several jobs in one ``POST /v1/events`` (no lock held).

        Returns:
            Each call's outcome, as ``_send`` would give it, the HTTP calls made, and
            whether the batch was answered with results (1) or not (0).
        """
        entries = []
        for job, pending in batch:
            _, body = self._request(job, pending)
            entries.append(wire.batch_entry(pending.event, body, self._key(pending),
                                            job.server_id))
        http = self._client._http
        try:
            answer = http.send_once("POST", "/events", json={"events": entries, "brief": True},
                                    expect=_batch_shape)
        except SeennError as error:
            status = error.status_code
            if status in (404, 405):
                # The backend no longer offers it (a downgrade, another backend behind
                # the same URL): single calls from now on, these ones at once.
                self._batch_max = 0
                self._log.warning("batch-off", "seenn: HTTP exporter: the backend answered "
                                  "%s to POST /v1/events; sending one call per event", status)
                return [self._send(job, pending) for job, pending in batch], 1 + len(batch), 0
            if status in (400, 413) or error.code == "RESPONSE_TOO_LARGE":
                # The envelope was refused as a whole (too large, or too many events for
                # this backend), or its answer was over the client's cap (the calls may
                # have been applied: their keys make the single calls replays). These
                # calls go singly, later batches are smaller.
                self._batch_max = max(2, min(self._batch_max, len(batch)) // 2)
                return [self._send(job, pending) for job, pending in batch], 1 + len(batch), 0
            # Nothing was applied, or the answer is lost: each call fares as a single one
            # that got this answer (retried with its key, or refused).
            return [self._judge(job, pending, error) for job, pending in batch], 1, 0
        results = answer["results"]
        if len(results) != len(batch):
            wrong = SeennError(f"the backend answered {len(results)} results to "
                               f"{len(batch)} events", code="INVALID_RESPONSE", status_code=200)
            return [("unreadable", wrong)] * len(batch), 1, 0
        outcomes = []
        for (job, pending), result in zip(batch, results, strict=True):
            status = result.get("status") if isinstance(result, Mapping) else None
            if type(status) is not int:
                outcomes.append(("unreadable", SeennError(
                    "a result of POST /v1/events has no status", code="INVALID_RESPONSE",
                    status_code=200)))
            elif 200 <= status < 300:
                outcomes.append(("ok", result.get("body")))
            else:
                outcomes.append(self._judge(job, pending,
                                            http.error_for(status, result.get("body"))))
        return outcomes, 1, 1

    def _send(self, job: Job, pending: Pending) -> tuple[str, Any]:
        path, body = self._request(job, pending)
        try:
            answer = self._client._http.send_once("POST", path, json=body,
                                                  idempotency_key=self._key(pending))
        except SeennError as error:
            return self._judge(job, pending, error)
        return "ok", answer

    def _judge(self, job: Job, pending: Pending, error: SeennError) -> tuple[str, Any]:
        """What an error answer to the event's call means: the outcome ``_settle`` takes."""
        event = pending.event
        if refuses_parent(error, event, job):
            # The parent is unknown (its start may still be on its way from another
            # process: wait a while, as below), finished, or too deep, or the child's
            # index is taken (a retried task starting its children again): start the
            # job on its own rather than lose it.
            if isinstance(error, NotFoundError) \
                    and self._clock() - pending.accepted < RESUMED_START_GRACE:
                pending.renewals += 1
                return "retry", error
            return "unlink", error
        return self._failed(job, pending, error)

    def _failed(self, job: Job, pending: Pending, error: SeennError) -> tuple[str, Any]:
        """What an error answer means for the event: retry, reject, gone, or done."""
        event = pending.event
        if isinstance(error, (APIConnectionError, RateLimitError, ServerError)):
            return "retry", error
        if isinstance(error, (ConflictError, NotFoundError)):
            if isinstance(error, NotFoundError) and event.sequence >= RESUMED_SEQUENCE_UNIT \
                    and not job.started_acked \
                    and self._clock() - pending.accepted < RESUMED_START_GRACE:
                # A job resumed from another process (seenn.propagation): the start that
                # process sent may not have reached the backend yet. Wait for it a while,
                # under a new idempotency key: a backend may store the 404 under the old
                # one and replay it, and a call answered 404 was not applied.
                pending.renewals += 1
                return "retry", error
            return ("reject" if event.kind == "started" else "gone"), error
        if error.code in UNREADABLE:
            # A 2xx that is not the backend's JSON (a proxy's HTML page, a huge body):
            # it may never have reached the backend. The same key makes a resend safe.
            return "unreadable", error
        if error.status_code is None or (200 <= error.status_code < 300):
            return "ok", None
        return "reject", error

    def _request(self, job: Job, pending: Pending) -> tuple[str, dict[str, Any]]:
        event = pending.event
        parent_ref = None
        if event.kind == "started" and event.parent_id is not None \
                and job.parent_id is not None:
            parent = self._jobs.get(event.parent_id)
            parent_ref = (parent.server_id if parent and parent.server_id
                          else event.parent_id)
        # The stale limit goes with a start, and with the first progress call of a job
        # resumed here (this process's limit then applies), never with a heartbeat.
        stale_after = self.stale_after
        if stale_after is not None and event.kind != "started" and not (
                not pending.key_suffix and (pending.resumed or resumes_here(event))):
            stale_after = None
        return wire.request(event, server_id=job.server_id, parent_ref=parent_ref,
                            include_traceback=self.include_traceback,
                            include_trace_context=self.include_trace_context,
                            stale_after=stale_after)

    # Settling (under self._cond) ------------------------------------------------------

    def _retry_delay(self, pending: Pending, error: BaseException, now: float) -> float:
        """How long to wait before the next attempt (a 429 pauses every job as long)."""
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            delay = float(retry_after)
            if isinstance(error, RateLimitError):
                self._paused_until = max(self._paused_until, now + delay)
            return delay
        # The exponent is capped: 2 ** 1024 does not fit a float.
        return self._random() * min(30.0, 0.5 * 2.0 ** min(pending.attempts - 1, 16))

    def _settle(self, job: Job, pending: Pending, outcome: str, value: Any) -> None:
        if outcome == "unlink":
            self._unlink(job, pending, value)
            return
        if pending.key_suffix[:1] == "h":
            self._settle_beat(job, pending, outcome, value)
            return
        event = pending.event
        stats = self.stats
        stats.requests += 1
        now = self._clock()
        if outcome in ("retry", "unreadable"):
            error: BaseException = value
            if outcome == "unreadable":
                self._log.warning("unreadable", "seenn: HTTP exporter: could not use the answer "
                                  "to the %s event of job %s (%s); it will be sent again",
                                  event.kind, event.job_id, error)
            stats.retries += 1
            pending.attempts += 1
            delay = self._retry_delay(pending, error, now)
            if self._stopping or now + delay - pending.accepted <= self.delivery_timeout:
                # Shutting down is no reason to give an event up: it stays queued (and
                # in the outbox) and shutdown() reports it.
                job.due = now + delay
                return
            stats.lost += 1
            self._log.error("lost", "seenn: HTTP exporter: gave up on the %s event of job %s "
                            "after %d attempts over %.0f s: %s", event.kind, event.job_id,
                            pending.attempts, now - pending.accepted, error)
            if event.kind == "started":
                self._drop_job(job, "its start could not be delivered")
                return
            self._shown(job, event)  # it may have been applied: never repeat older values
        elif outcome == "reject":
            stats.rejected += 1
            self._log.warning("refused", "seenn: HTTP exporter: the backend refused the %s "
                              "event of job %s: %s", event.kind, event.job_id, value)
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
                self._log.warning("not-applied", "seenn: HTTP exporter: the %s event of job %s "
                                  "was not applied: %s", event.kind, event.job_id, value)
            job.beat = None  # the backend ended the job, or does not know it
        else:
            stats.delivered += 1
            self._shown(job, event)
            if event.kind == "started":
                job.started_acked = True
                self._child_settled(job)
                server_id = wire.assigned_id(value, event.job_id)
                if server_id is not None:
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
        del job.queue[0]
        if not pending.key_suffix:
            self._forget_durable(event)

    def _drop_job(self, job: Job, why: str) -> None:
        self._forget_children(job)
        job.beat = None
        del job.queue[0]
        dropped = len(job.queue)
        self.stats.rejected += dropped
        job.queue.clear()
        self._refuse(job.id)
        if self._outbox is not None:
            self._outbox.remove_job(job.id)
        if dropped:
            self._log.log(logging.INFO, "dropped-later", "seenn: HTTP exporter: dropped %d "
                          "later event(s) of job %s: %s", dropped, job.id, why)
        for child_id in job.dependents:
            child = self._jobs.get(child_id)
            if child is not None and not child.busy:
                child.parent_id = None  # its parent will never exist: start it on its own
                self._schedule(child)
        job.dependents.clear()
