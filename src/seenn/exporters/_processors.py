"""``BatchProcessor``: how events travel to exporters that do I/O.

``BatchProcessor`` is the one to use for anything that does I/O: ``on_event``
only appends to an in-memory queue under a short lock, and a worker thread
calls the exporter. Per job, events keep their order; progress is coalesced
(latest wins, at most one progress event per job per ``progress_interval``).
"""

from __future__ import annotations

import atexit
import os
import threading
import time
import weakref
from collections import deque
from heapq import heappop, heappush
from typing import TYPE_CHECKING

from seenn._core.pipeline import ExportResult, RateLimitedLog, internal_error, is_strict, logger
from seenn._core.validation import fail
from seenn.exporters._simple import call_exporter

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from seenn._core.events import JobEvent
    from seenn._core.pipeline import Exporter

__all__ = ["BatchProcessor"]

_monotonic = time.monotonic
_IDLE_POLL = 0.5  # seconds: the longest a deferred event can wait for the worker
_TAKE_AT = 64  # events in the inbox that make a producer queue them
LIFECYCLE_FACTOR = 32  # started events may fill this many times max_queue_size


_live: weakref.WeakSet[BatchProcessor] = weakref.WeakSet()


class BatchProcessor:
    """Queues events and exports them from a worker thread, coalescing progress.

    * ``on_event`` never blocks and never does I/O: it appends to a bounded
      in-memory queue under a lock held for a few microseconds.
    * Per job, events are exported in the order they happened. Progress is
      coalesced: a job has at most one progress event exported per
      ``progress_interval`` seconds, and a newer one replaces one still
      waiting (every event carries the job's whole state, so nothing is lost
      but intermediate values).
    * ``started`` and terminal events are never coalesced, and progress never
      costs them their place: once ``max_queue_size`` events are waiting, a
      progress event waits in its job's slot instead (one per job, a newer one
      replacing it), while ``started`` events are still admitted up to
      ``32 * max_queue_size`` (65,536 by default: a burst of tens of thousands
      of short jobs, about 0.4 KB an event). Only past that point (an exporter
      far behind, or stuck) is a new job refused, and then as a whole. With a
      durable exporter (``HTTPExporter`` with an outbox) the refused job is
      not lost: its start is on disk already, and the exporter reads it back
      from there (counted in ``spilled``). Otherwise it is dropped with all
      its events, so a backend never sees half a job: counted in ``dropped``,
      logged (one line a minute), and the next ``force_flush()`` returns
      ``False``. Every admitted job gets its terminal event queued, in order.
      Memory stays bounded by ``32 * max_queue_size`` events plus one progress
      and one terminal event per running job.
    * An exporter that raises or hangs never reaches the tracked code: errors
      are logged with the job ids and counted; ``force_flush``/``shutdown``
      give up at their deadline.
    * The worker starts with the first event, not at construction; after
      ``os.fork()`` the child starts with an empty queue and a new worker; at
      interpreter exit pending events are flushed (within ``exit_timeout``).
      The worker lives until ``shutdown()``: ``configure()`` shuts down the
      processors it replaces, and processors you make yourself are yours to
      shut down.

    Args:
        exporter: Where the events go.
        max_queue_size: How many events may wait for the exporter before progress
            events wait in their job's slot (``started`` events: 32 times as many).
        max_export_batch_size: The most events handed to one ``export`` call.
        progress_interval: The least time between two progress events of a job.
        schedule_delay: How long the worker lets events gather before exporting
            them (unless a batch fills first): the most a ``started`` or terminal
            event waits.
        exit_timeout: How long the flush at interpreter exit may take.
    """

    def __init__(
        self,
        exporter: Exporter,
        *,
        max_queue_size: int = 2048,
        max_export_batch_size: int = 512,
        progress_interval: float = 0.25,
        schedule_delay: float = 0.1,
        exit_timeout: float = 5.0,
    ) -> None:
        if max_queue_size < 1:
            fail("max_queue_size", "must be at least 1")
        if max_export_batch_size < 1:
            fail("max_export_batch_size", "must be at least 1")
        if progress_interval < 0:
            fail("progress_interval", "must not be negative")
        if schedule_delay < 0:
            fail("schedule_delay", "must not be negative")
        self._exporter = exporter
        self._max_queue = max_queue_size
        self._max_lifecycle = LIFECYCLE_FACTOR * max_queue_size
        self._max_batch = max_export_batch_size
        self._interval = progress_interval
        self._delay = schedule_delay
        self._exit_timeout = exit_timeout
        # A durable exporter (HTTPExporter with an outbox) writes starts and ends
        # to disk before the tracked block goes on: the one local write per job
        # boundary that durability costs.
        self._persist: Callable[[JobEvent], object] | None = getattr(exporter, "persist", None)
        # ... and can take a job the queue has no room for from there.
        self._restore: Callable[[Sequence[str]], None] | None = getattr(
            exporter, "spilled", None)
        self._hand_off: Callable[[str], None] | None = getattr(exporter, "on_hand_off", None)
        self._log = RateLimitedLog()
        self._closed = False
        self._reset_state()
        _live.add(self)

    def _reset_state(self) -> None:
        self._lock = threading.Lock()
        # Events handed over and not queued yet (see on_event), in order.
        self._deferred: deque[JobEvent] = deque()
        # Queue the inbox once it holds this many events: a batch fills promptly,
        # and the inbox holds at most this many events (plus what arrives while
        # another thread holds the lock) on top of the queue's own bound.
        self._take_at = min(_TAKE_AT, self._max_batch)
        self._wake = threading.Condition(self._lock)  # the worker waits on this
        self._progressed = threading.Condition(self._lock)  # flushers wait on this
        self._ready: deque[JobEvent] = deque()
        self._held: dict[str, JobEvent] = {}  # progress waiting for its job's next slot
        self._last_sent: dict[str, float] = {}  # job id -> when its last progress was released
        # (due, job id) of each held progress event, a heap: a slot is made only
        # when an event has to wait, so a job that reports less often than
        # progress_interval costs the worker nothing here.
        self._slots: list[tuple[float, str]] = []
        self._refused: set[str] = set()  # jobs dropped whole because the queue was full
        # Jobs whose start persist() could not write (a full or failing outbox), until
        # their start is queued: one of those is never left to the outbox.
        self._unsaved: set[str] = set()
        self._worker: threading.Thread | None = None
        self._stopping = False
        self._worker_idle = False  # waiting for anything to do
        # on_event must take the lock at once: no worker yet, the worker is idle, or
        # the processor is closed (its events are dropped, and counted, at once).
        self._needs_poke = True
        self._collecting = False  # waiting for a batch to fill
        self._urgent = 0  # flushes in progress: export without waiting
        self._enqueued = 0  # events ever put in _ready
        self._handled = 0  # events ever handed to the exporter (whatever the outcome)
        self._errors: list[BaseException] = []  # kept for strict mode
        self._exported = 0
        self._failed = 0
        self._coalesced = 0
        self._dropped = 0
        self._dropped_at_flush = 0  # _dropped when force_flush() last reported
        self._spilled: list[str] = []  # jobs left on the exporter's disk, to hand over
        self._spilled_jobs = 0

    # -- counters ----------------------------------------------------------------------

    @property
    def exported(self) -> int:
        """Events the exporter accepted."""
        return self._exported

    @property
    def failed(self) -> int:
        """Events the exporter refused or raised on."""
        return self._failed

    @property
    def coalesced(self) -> int:
        """Progress events replaced by a newer event of the same job before export."""
        self._retake_deferred()  # count the inbox too
        return self._coalesced

    @property
    def dropped(self) -> int:
        """Events dropped (their job found the queue full, or the processor was shut down).

        A drop makes the next ``force_flush()`` return ``False``.
        """
        self._retake_deferred()  # count the inbox too
        return self._dropped

    @property
    def spilled(self) -> int:
        """Jobs the queue had no room for, left to the exporter's outbox (not lost)."""
        self._retake_deferred()  # count the inbox too
        return self._spilled_jobs

    @property
    def queued(self) -> int:
        """Events waiting for the exporter now."""
        with self._lock:
            self._take_deferred()
            count = len(self._ready) + len(self._held)
        self._retake_deferred()
        return count

    @property
    def exporter(self) -> Exporter:
        """The exporter events are handed to."""
        return self._exporter

    # -- the producer side (user threads) ----------------------------------------------

    def on_event(self, event: JobEvent) -> None:
        """Queue ``event`` for export; never blocks on the exporter, nor on other threads."""
        # The exporter's kind first: most have no persist(), and then one test suffices.
        if self._persist is not None and event.kind != "progress" and not self._closed:
            self._persist_now(event)
        # The event joins the inbox without the lock (a deque append is atomic), and
        # whoever next holds the lock queues the inbox in order: this thread once per
        # _take_at events, or at once when the worker must be started or woken, or
        # the processor is closed. Taking the lock for every event cost more than
        # all the rest of queueing it. Never wait for the lock: its holder may itself
        # be waiting for the GIL, and blocking here would queue every tracked thread
        # up behind it (a convoy that cost 4 CPU-bound threads ~30 us per call).
        inbox = self._deferred
        inbox.append(event)
        if self._needs_poke or len(inbox) >= self._take_at:
            self._retake_deferred()

    def _retake_deferred(self) -> None:
        # Queue the inbox if the lock is free. If another thread holds it, the
        # inbox waits for the next holder: the worker takes it before each batch
        # and at least every _IDLE_POLL seconds, and a producer at its next event.
        # Never waits for the lock: the counters call this, and may be read under
        # the lock (by a logging handler of the processor's own warning).
        lock = self._lock
        while self._deferred and lock.acquire(False):
            try:
                self._take_deferred()
            finally:
                lock.release()

    def _take_deferred(self) -> None:
        """Queue the inbox's events, in order; the caller holds the lock."""
        # Every state change of every job passes here: the common paths are written
        # out in the loop rather than split into helper methods.
        inbox = self._deferred
        if not inbox:
            return
        if self._closed:
            while inbox:
                inbox.popleft()
                self._dropped += 1
            return
        if self._worker is None:
            self._start_worker()
        ready = self._ready
        held = self._held
        last_sent = self._last_sent
        interval = self._interval
        popleft = inbox.popleft
        append = ready.append
        taken = 0
        try:
            while inbox:
                event = popleft()
                kind = event.kind
                job_id = event.job_id
                if kind == "progress":
                    if job_id in held:
                        held[job_id] = event
                        self._coalesced += 1
                        continue
                    if self._refused and job_id in self._refused:  # a job dropped whole
                        self._dropped += 1
                        continue
                    now = _monotonic()
                    last = last_sent.get(job_id)
                    if len(ready) + len(held) >= self._max_queue:
                        # Full: wait in the job's slot (the newest wins) rather than be
                        # dropped; slots are one per running job, like the terminal
                        # events to come.
                        due = now if last is None else max(now, last + interval)
                        heappush(self._slots, (due, job_id))
                        held[job_id] = event
                        continue
                    if last is None or now - last >= interval:
                        last_sent[job_id] = now
                    else:
                        heappush(self._slots, (last + interval, job_id))
                        held[job_id] = event  # an idle worker is woken below
                        continue
                elif kind == "started":
                    if len(ready) + len(held) >= self._max_lifecycle:
                        self._overflow(job_id)
                        continue
                    if self._unsaved:
                        self._unsaved.discard(job_id)
                else:
                    if self._refused and job_id in self._refused:
                        self._refused.discard(job_id)
                        self._dropped += 1
                        continue
                    # The terminal event carries the job's final state, so a progress
                    # event still waiting has nothing left to say.
                    if held.pop(job_id, None) is not None:
                        self._coalesced += 1
                    last_sent.pop(job_id, None)
                append(event)
                taken += 1
        finally:
            self._enqueued += taken
        self._poke_worker()

    def _overflow(self, job_id: str) -> None:
        """No room for a new job; the caller holds the lock (the queue is full, so not hot)."""
        name = type(self._exporter).__name__
        saved = job_id not in self._unsaved
        self._unsaved.discard(job_id)
        if saved and self._restore is not None and getattr(self._exporter, "durable", False):
            # Its start is on disk already (persist() ran first): the exporter takes
            # it from there, and its later events follow through the queue as usual.
            self._spilled.append(job_id)
            self._spilled_jobs += 1
            self._log.warning("spilled", "seenn: %d events are waiting for exporter %s; job %s "
                              "waits in its outbox until there is room", self._max_lifecycle,
                              name, job_id)
            return
        self._refused.add(job_id)
        self._dropped += 1
        self._log.warning("dropped", "seenn: %d events are waiting for exporter %s; dropped job "
                          "%s whole (counted in BatchProcessor.dropped)", self._max_lifecycle,
                          name, job_id)

    def on_hand_off(self, job_id: str) -> None:
        """Forget what is kept per job for a job that goes on in another process.

        No terminal event will come for it here (see ``TrackedJob.hand_off()``);
        a progress event still held is exported as usual. The exporter is told
        too, if it asks (``on_hand_off``: the HTTP exporter stops the job's
        heartbeats); it is called on this thread, so it must not block.
        """
        with self._lock:
            self._take_deferred()  # its events so far first: they may set what is forgotten
            self._refused.discard(job_id)
            if job_id not in self._held:
                self._last_sent.pop(job_id, None)
            closed = self._closed
        self._retake_deferred()  # what arrived while the lock was held
        if self._hand_off is not None and not closed:
            self._hand_off(job_id)

    def _persist_now(self, event: JobEvent) -> None:
        assert self._persist is not None
        try:
            saved = self._persist(event)
        except Exception as exc:
            saved = False
            internal_error(f"{type(self._exporter).__name__}.persist()", exc, (event.job_id,))
            if is_strict():
                raise
        if saved is False and event.kind == "started":
            self._unsaved.add(event.job_id)

    def _poke_worker(self) -> None:
        """Wake the worker if it waits for events or for a batch now full (lock held)."""
        if self._worker_idle or (self._collecting and len(self._ready) >= self._max_batch):
            self._wake_worker()

    def _wake_worker(self) -> None:
        """Wake the waiting worker; the caller holds the lock."""
        # Once is enough: the worker needs the GIL to wake, and until it gets it
        # every further event would call notify() (a Python-level call) again.
        # The worker raises the flags again before it next waits.
        self._worker_idle = self._collecting = False
        self._needs_poke = self._closed
        self._wake.notify()

    def _release(self, job_id: str, event: JobEvent, now: float) -> None:
        self._last_sent[job_id] = now
        self._ready.append(event)
        self._enqueued += 1
        self._poke_worker()

    def _release_due(self, now: float) -> None:
        slots = self._slots
        held = self._held
        last_sent = self._last_sent
        interval = self._interval
        while slots and slots[0][0] <= now:
            due, job_id = heappop(slots)
            # A slot is stale if its event went already (a flush, the job's end)
            # and the job released progress since: the held event, if any, has
            # a later slot of its own. Same sum as when the slot was made, so an
            # unchanged last_sent matches exactly.
            if job_id in held and last_sent.get(job_id, -interval) + interval <= due:
                self._release(job_id, held.pop(job_id), now)

    def _release_all(self) -> None:
        held = self._held
        now = _monotonic()
        while held:
            job_id, event = held.popitem()
            self._release(job_id, event, now)

    def _start_worker(self) -> None:
        worker = threading.Thread(target=self._run, name="seenn-batch-processor", daemon=True)
        self._worker = worker
        self._needs_poke = self._closed
        worker.start()

    # -- the worker --------------------------------------------------------------------

    def _run(self) -> None:
        lock = self._lock
        backlog = False  # events left over from the last batch: export them at once
        while True:
            with lock:
                self._take_deferred()
                while not (self._ready or self._held or self._stopping or self._urgent):
                    self._worker_idle = self._needs_poke = True
                    if self._deferred:  # handed over before producers could see the flag
                        self._worker_idle = False
                        self._needs_poke = self._closed
                        self._take_deferred()
                        continue
                    # A timeout, not a bare wait: an event handed over between the test
                    # above and the wait found the lock taken, and has no one else to
                    # take it.
                    self._wake.wait(_IDLE_POLL)
                    self._worker_idle = False
                    self._needs_poke = self._closed
                    self._take_deferred()
                if not backlog:
                    self._collect()
                    self._take_deferred()  # what arrived meanwhile belongs in this batch
                self._release_due(_monotonic())
                # Handed over before the batch: it may hold later events of those jobs.
                spilled = self._spilled
                if spilled:
                    self._spilled = []
                elif not self._ready:
                    backlog = False
                    if self._stopping:
                        return
                    continue
                count = min(len(self._ready), self._max_batch)
                batch = [self._ready.popleft() for _ in range(count)]
                backlog = bool(self._ready)
            if spilled:
                self._hand_spilled(spilled)
            if batch:
                self._export(batch)
            with lock:
                self._take_deferred()
                self._handled += len(batch)
                self._progressed.notify_all()

    def _collect(self) -> None:
        """Let events gather for up to ``schedule_delay`` (or until a progress slot is due).

        Waking the worker for every event would make the tracked threads and
        the worker trade the GIL for each one; gathering them costs each event
        nothing and each batch one wake-up.
        """
        deadline = _monotonic() + self._delay
        try:
            while not (self._stopping or self._urgent or len(self._ready) >= self._max_batch):
                now = _monotonic()
                timeout = deadline - now
                if self._held and self._slots:
                    timeout = min(timeout, self._slots[0][0] - now)
                if timeout <= 0:
                    return
                self._collecting = True
                self._wake.wait(timeout)
        finally:
            self._collecting = False

    def _hand_spilled(self, job_ids: list[str]) -> None:
        assert self._restore is not None
        try:
            self._restore(job_ids)
        except Exception as exc:
            internal_error(f"{type(self._exporter).__name__}.spilled()", exc, job_ids)
            if is_strict():
                self._errors.append(exc)

    def _export(self, batch: list[JobEvent]) -> None:
        name = type(self._exporter).__name__
        try:
            result = self._exporter.export(batch)
        except Exception as exc:
            self._failed += len(batch)
            internal_error(f"exporter {name}", exc, (event.job_id for event in batch))
            if is_strict():
                self._errors.append(exc)
            return
        if result is ExportResult.FAILURE:
            self._failed += len(batch)
            logger.warning("seenn: exporter %s could not export %d event(s) of job %s", name,
                           len(batch), ", ".join(dict.fromkeys(e.job_id for e in batch)))
        else:
            self._exported += len(batch)

    # -- flush and shutdown ------------------------------------------------------------

    def _wait_handled(self, deadline: float) -> bool:
        """Release everything held and wait until the worker has handed it over."""
        with self._lock:
            self._take_deferred()
            self._release_all()
            target = self._enqueued
            if self._handled >= target:
                return True
            if self._worker is None:
                self._start_worker()
            self._urgent += 1
            self._wake.notify()
            try:
                while self._handled < target:
                    remaining = deadline - _monotonic()
                    if remaining <= 0:
                        return False
                    self._progressed.wait(remaining)
                return True
            finally:
                self._urgent -= 1

    def _raise_kept_error(self) -> None:
        if self._errors and is_strict():
            error = self._errors[0]
            self._errors.clear()
            raise error

    def force_flush(self, timeout: float = 30.0) -> bool:
        """Export everything queued (waiting progress included) within ``timeout`` seconds.

        Returns:
            ``True`` if everything was handed to the exporter and the exporter
            flushed in time; ``False`` at the deadline (the rest stays queued),
            or if events were dropped since the last ``force_flush()``.
        """
        deadline = _monotonic() + timeout
        done = self._wait_handled(deadline)
        self._retake_deferred()
        self._raise_kept_error()
        flushed = done and call_exporter(self._exporter, "force_flush",
                                          deadline - _monotonic())
        dropped = self._dropped
        clean = dropped == self._dropped_at_flush
        self._dropped_at_flush = dropped
        return flushed and clean

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop taking events, export what is queued within ``timeout``, shut the exporter down.

        Events still queued at the deadline are counted as dropped.
        """
        with self._lock:
            if self._closed:
                return
            self._take_deferred()
            self._closed = self._needs_poke = True
        deadline = _monotonic() + timeout
        self._wait_handled(deadline)
        with self._lock:
            self._stopping = True
            worker = self._worker
            self._wake.notify_all()
        if worker is not None and worker is not threading.current_thread():
            worker.join(max(deadline - _monotonic(), 0.0))
        with self._lock:
            left = len(self._ready)
            if left:
                self._ready.clear()
                self._dropped += left
        _live.discard(self)
        call_exporter(self._exporter, "shutdown", deadline - _monotonic())
        self._raise_kept_error()

    def _after_fork_in_child(self) -> None:
        # The parent's worker does not exist here and its lock may have been
        # held at the fork: start over with nothing queued (the parent sends
        # its own events).
        closed = self._closed
        self._reset_state()
        self._closed = closed


@atexit.register
def _shutdown_at_exit() -> None:
    for processor in list(_live):
        try:
            processor.shutdown(processor._exit_timeout)
        except Exception as exc:  # interpreter exit is no place to raise
            logger.error("seenn: flushing at exit failed: %r", exc)


def _after_fork_in_child() -> None:
    for processor in list(_live):
        processor._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
