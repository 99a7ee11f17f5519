"""The delivery core of ``HTTPExporter``: per-job queues, scheduling, delivery threads, settling.

Events are filed into per-job queues under one lock; a small pool of threads
takes each job's head event when it is due, sends it without the lock, then
settles the outcome (acknowledge, retry with backoff, reject or give up).
"""

from __future__ import annotations

import heapq
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from seenn._core.events import RESUMED_SEQUENCE_UNIT
from seenn.errors import (
    APIConnectionError,
    ConflictError,
    NotFoundError,
    RateLimitError,
    SeennError,
    ServerError,
)
from seenn.exporters._http import wire
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


class DeliveryCore:
    """The machinery of :class:`HTTPExporter`, which sets what is declared here."""

    include_traceback: bool
    include_trace_context: bool
    progress_interval: float
    max_concurrency: int
    delivery_timeout: float
    max_pending_jobs: int
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
                    remember(self._overflow, job_id)
                elif not durable and self._outbox is not None:
                    self._outbox.add(event)
                self._warn("seenn: HTTP exporter: %d jobs are waiting for the backend; "
                           "dropped the %s event of job %s", pending, event.kind, job_id)
                return
            parent_id = event.parent_id if event.kind == "started" else None
            if parent_id in self._refused:
                parent_id = None  # its parent will never exist: start it on its own
            job = Job(job_id, parent_id=parent_id)
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
            self._enqueue(job, Pending(replace(event, kind="progress", status="running"),
                                       self._clock(), key_suffix="p"))
        if event.kind != "started":
            job.shown = (event.progress, event.stage, event.message)
        elif event.stage is not None:
            job.shown = (0, event.stage, None)
        self._enqueue(job, Pending(event, self._clock()))

    @staticmethod
    def _stale(job: Job, event: JobEvent) -> bool:
        progress, stage, message = job.shown
        if event.kind == "completed":
            return event.stage != stage
        return (event.progress, event.stage, event.message) != (progress, stage, message)

    def _enqueue(self, job: Job, pending: Pending) -> None:
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
        remember(self._refused, job_id)

    def _retire(self, job: Job) -> None:
        """Remove a job whose queue is empty, remembering what later events need."""
        del self._jobs[job.id]
        for child_id in job.dependents:  # cannot happen while its start is queued; be safe
            child = self._jobs.get(child_id)
            if child is not None and not child.busy:
                self._schedule(child)
        if job.started_acked and not job.finished:
            remember(self._memory, job.id, (job.server_id, job.last_progress, True))

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

    def _when(self, job: Job) -> float | None:
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

    def _next(self) -> tuple[Job, Pending] | None:
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

    def _send(self, job: Job, pending: Pending) -> tuple[str, Any]:
        event = pending.event
        path, body = self._request(job, event)
        try:
            key = wire.idempotency_key(event, pending.key_suffix)
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

    def _request(self, job: Job, event: JobEvent) -> tuple[str, dict[str, Any]]:
        parent_ref = None
        if event.kind == "started" and event.parent_id is not None \
                and job.parent_id is not None:
            parent = self._jobs.get(event.parent_id)
            parent_ref = (parent.server_id if parent and parent.server_id
                          else event.parent_id)
        return wire.request(event, server_id=job.server_id, parent_ref=parent_ref,
                            include_traceback=self.include_traceback,
                            include_trace_context=self.include_trace_context)

    # Settling (under self._cond) ------------------------------------------------------

    def _settle(self, job: Job, pending: Pending, outcome: str, value: Any) -> None:
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
        job.queue.popleft()
        if not pending.key_suffix:
            self._forget_durable(event)

    def _drop_job(self, job: Job, why: str) -> None:
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
