"""Heartbeats: a quiet job that is still running here tells the backend it is alive.

A backend with a stale limit (``seenn serve``) ends a ``running`` job that has
not been written to for a while as ``failed``/``WORKER_LOST``: that is how a
job whose worker was killed stops showing "running" forever. A job that is
alive but quiet (a long render with no progress to report) must not look like
one, so the exporter repeats what the backend already shows, with a progress
call, once it has delivered nothing for the job in ``heartbeat_interval``.

Which jobs: those whose ``started`` event, or whose first event after a
``resume()`` here, came through ``export()`` (not replays from an outbox),
while their latest event says ``running``, until they end, are handed off
(``on_hand_off``), or the backend refuses or no longer knows them. What is
sent: ``POST /jobs/{id}/progress`` with the progress, stage and message of the
last call the backend took, under the key ``<job id>.<sequence>h<n>``
(``sequence`` of the job's latest event, ``n`` counting heartbeats since), the
same on every retry of that heartbeat.

Scheduling costs nothing per tick: a quiet job has one entry in the delivery
threads' timer heap, keyed by when its heartbeat is due. An entry made stale by
a later delivery is moved to the new due time when it falls due, so a job that
keeps reporting has one entry, not one per call. Everything here runs on the
delivery threads, under the exporter's lock; the processor's side
(``on_hand_off``) only appends to a deque.
"""

from __future__ import annotations

import heapq
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from seenn._core.events import RESUMED_SEQUENCE_UNIT, JobEvent
from seenn.exporters._http.state import Beat, Job, Pending, remember

if TYPE_CHECKING:
    from seenn._core.models import Stage
    from seenn._core.pipeline import RateLimitedLog
    from seenn.exporters._http.state import DeliveryStats

__all__ = ["Heartbeats", "Remembered", "resumes_here"]

Remembered = tuple[str | None, float, bool, Beat | None, Mapping[str, Any] | None]
"""What outlives a job's queue: its backend id, last progress call, start acknowledged,
heartbeat, and the metadata the backend has (see ``DeliveryCore._stale``)."""
"""What outlives a job's queue: the backend's id for it, when its last progress call
went, whether its start was acknowledged, and its heartbeat state."""

_RESUMED_MASK = RESUMED_SEQUENCE_UNIT - 1

_MAX_GRAIN = 1.0
"""The most a heartbeat's due time is rounded up by, in seconds."""

_REDO_WHILE_BUSY = 1.0
"""Seconds a due heartbeat waits when a flush is running or memory is full."""


def resumes_here(event: JobEvent) -> bool:
    """Whether ``event`` is the first of a job resumed in this process (``resume()``)."""
    sequence = event.sequence
    return event.kind == "progress" and sequence != 0 and not sequence & _RESUMED_MASK


class Heartbeats:
    """The heartbeat half of ``DeliveryCore``; all methods run under the exporter's lock."""

    heartbeat_interval: float | None
    max_pending_jobs: int
    delivery_timeout: float
    stats: DeliveryStats
    _clock: Callable[[], float]
    _jobs: dict[str, Job]
    _memory: dict[str, Remembered]
    _timers: list[tuple[float, int, str]]
    _timer_seq: int
    _flushing: int
    _stopping: bool
    _log: RateLimitedLog

    def _enqueue(self, job: Job, pending: Pending) -> None:
        raise NotImplementedError  # DeliveryCore's

    def _retry_delay(self, pending: Pending, error: BaseException, now: float) -> float:
        raise NotImplementedError  # DeliveryCore's

    def _reset_beats(self) -> None:
        # Hand-offs reported by processors, taken by the delivery threads: appending
        # to a deque never waits, and the lock may be held across an outbox write.
        self._hand_offs: deque[str] = deque()
        # Jobs handed off before their start reached the exporter (bounded).
        self._handed: dict[str, None] = {}

    # The export side -------------------------------------------------------------------

    def _note(self, job: Job, event: JobEvent) -> None:
        """Follow a job through an event ``export()`` filed: is it live here, and running?"""
        beat = job.beat
        sequence = event.sequence
        if event.kind == "started":
            if job.id not in self._handed:  # else handed off before its start came here
                job.beat = Beat(sequence, event.status == "running")
            return
        if resumes_here(event):
            self._handed.pop(job.id, None)
            if beat is None:
                job.beat = Beat(sequence, event.status == "running")
                return
            # Resumed here while its earlier run here is still live: that run handed the
            # job off, and its on_hand_off (still to come) must not stop this one.
            beat.implied += 1
        elif beat is None:
            return
        elif event.is_terminal:
            job.beat = None
            return
        beat.sequence = sequence
        beat.count = 0
        beat.running = event.status == "running"

    def _take_hand_offs(self) -> None:
        """Stop the heartbeats of jobs that processors said were handed off."""
        hand_offs = self._hand_offs
        while hand_offs:
            job_id = hand_offs.popleft()
            job = self._jobs.get(job_id)
            remembered = self._memory.get(job_id) if job is None else None
            beat = job.beat if job is not None else (
                remembered[3] if remembered is not None else None)
            if beat is not None and beat.implied:
                beat.implied -= 1
                continue
            if job is not None:
                job.beat = None
            elif remembered is not None and beat is not None:
                server_id, last_progress, started_acked, _, metadata = remembered
                self._memory[job_id] = (server_id, last_progress, started_acked, None, metadata)
            remember(self._handed, job_id)

    # The delivery side -----------------------------------------------------------------

    @staticmethod
    def _shown(job: Job, event: JobEvent) -> None:
        """The backend took (or may have taken) ``event``: it is what a heartbeat repeats."""
        beat = job.beat
        if beat is None:
            return
        if event.kind == "progress":
            beat.shown = (event.progress, event.stage, event.message)
        elif event.kind == "started":
            beat.shown = (0, event.stage, None)  # a start sets no progress or message

    def _went_quiet(self, job: Job) -> None:
        """The job's queue is empty: its heartbeat falls due an interval from now."""
        beat = job.beat
        interval = self.heartbeat_interval
        if (beat is None or interval is None or not beat.running or beat.shown is None
                or self._stopping):
            return
        # Rounded up to a grain (1/16 of the interval, at most a second): heartbeats due
        # close together go out on one wake-up of the delivery threads, not one each.
        grain = min(interval / 16, _MAX_GRAIN)
        beat.due = math.ceil((self._clock() + interval) / grain) * grain
        if not beat.timer:  # else its entry is moved on when it falls due
            self._push_beat(job.id, beat, beat.due)

    def _push_beat(self, job_id: str, beat: Beat, when: float) -> None:
        self._timer_seq += 1
        beat.timer = self._timer_seq
        heapq.heappush(self._timers, (when, self._timer_seq, job_id))

    def _beat(self, job_id: str, timer: int, now: float) -> bool:
        """A timer fell due for a job not in delivery: make its heartbeat if it is due.

        Returns:
            Whether a heartbeat was queued.
        """
        remembered = self._memory.get(job_id)
        beat = remembered[3] if remembered is not None else None
        if beat is None or beat.timer != timer:
            return False  # another entry's, or the job is no longer live here
        beat.timer = 0
        interval = self.heartbeat_interval
        if interval is None or self._stopping or not beat.running or beat.shown is None:
            return False
        if beat.due > now:  # something was delivered since the entry was made
            self._push_beat(job_id, beat, beat.due)
            return False
        if self._flushing or len(self._jobs) >= self.max_pending_jobs:
            # A flush waits for what is queued: do not keep adding to it. With memory
            # full the backend is far behind, and real events come first.
            self._push_beat(job_id, beat, now + min(interval, _REDO_WHILE_BUSY))
            return False
        assert remembered is not None
        del self._memory[job_id]
        job = Job(job_id)
        job.server_id, job.last_progress, job.started_acked, job.beat, job.metadata = remembered
        job.shown = beat.shown
        self._jobs[job_id] = job
        progress, stage, message = beat.shown
        count = beat.count
        beat.count += 1
        self._enqueue(job, Pending(heartbeat_event(job_id, beat.sequence, progress, stage,
                                                   message), now, key_suffix=f"h{count}"))
        return True

    def _settle_beat(self, job: Job, pending: Pending, outcome: str, value: Any) -> None:
        """Settle a heartbeat call: retried with its key, else done; never counted as lost."""
        stats = self.stats
        stats.requests += 1
        now = self._clock()
        if outcome in ("retry", "unreadable"):
            stats.retries += 1
            pending.attempts += 1
            delay = self._retry_delay(pending, value, now)
            if (job.beat is not None and not (self._stopping or self._flushing)
                    and now + delay - pending.accepted <= self.delivery_timeout):
                job.due = now + delay
                return
            # Given up quietly: the next heartbeat comes an interval after this.
        elif outcome == "ok":
            stats.heartbeats += 1
            job.last_progress = now
        else:
            # Refused, or the backend no longer knows the job or has ended it (a 409:
            # perhaps its stale limit did): a later heartbeat would fare no better.
            job.beat = None
            self._log.warning("heartbeat", "seenn: HTTP exporter: the backend did not take "
                              "a heartbeat of job %s, which gets no more: %s", job.id, value)
        job.due = 0.0
        del job.queue[0]


def heartbeat_event(job_id: str, sequence: int, progress: int, stage: Stage | None,
                    message: str | None) -> JobEvent:
    """The progress event a heartbeat sends: only what the backend shows already."""
    return JobEvent(kind="progress", job_id=job_id, job_type="", user_id=None, title=None,
                    status="running", progress=progress, message=message, stage=stage,
                    queue=None, metadata=None, result=None, error=None, retryable=None,
                    parent_id=None, child_index=None, sequence=sequence,
                    timestamp=time.time(), trace_id=None, span_id=None)
