"""The change feed of long polls: who waits for which jobs, and waking them when they change.

A long poll (``GET /v1/jobs/{id}?wait=S`` with ``If-None-Match``) registers a
:class:`Waiter` for its jobs, reads them, and if nothing changed waits on the waiter
until it is woken or its time is up; woken, it reads again. A wake is only a hint:
the database stays the truth, so a spurious wake costs one read and a missed one
never happens as long as every change reaches the feed by one of two roads:

* **Writes of this process.** ``Store.write`` tells :meth:`ChangeFeed.notify` the
  ids a transaction wrote, after it commits. A PostgreSQL engine feeds the same
  method from ``LISTEN``/``NOTIFY``, which also covers other processes.
* **Writes of other processes on the same SQLite file.** With ``versions`` given, a
  thread polls every ``poll_interval`` while anyone waits: a cheap counter first
  (SQLite's ``data_version``: did any other connection commit?), and only when it
  moved, one query for the jobs of every waiter of the process, compared with the
  fingerprints each waiter took before its first read.

The waiter registers before it reads, so a change is either in what it reads or
reaches it afterwards. Each waiter holds its server thread while it waits (a
connection's thread in the built-in server, a worker thread under gunicorn), so
their number is bounded per process by ``max_waiters``; past the bound a request is
answered at once, as a plain poll.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager

logger = logging.getLogger("seenn.server")

Key = tuple[str, str]  # (app id, job id)
Versions = Callable[[Collection[Key]], dict[Key, int]]

DEFAULT_MAX_WAITERS = 64
DEFAULT_POLL_INTERVAL = 0.025
MAX_WAIT_SECONDS = 30
_WARN_INTERVAL = 60.0


class Waiter:
    """One long poll waiting for any of its jobs to change."""

    __slots__ = ("_event", "baseline", "keys")

    def __init__(self, keys: frozenset[Key], baseline: dict[Key, int] | None) -> None:
        self.keys = keys
        # What the jobs looked like before the first read; None without polling.
        self.baseline = baseline
        self._event = threading.Event()

    def clear(self) -> None:
        """Forget an earlier wake: call it before each read."""
        self._event.clear()

    def wait(self, timeout: float) -> bool:
        """Wait until woken or ``timeout`` seconds pass; whether it was woken."""
        return self._event.wait(timeout)

    def wake(self) -> None:
        self._event.set()


class ChangeFeed:
    """The long-poll waiters of one process and the changes that wake them.

    Args:
        max_waiters: How many requests of this process may wait at once; 0 turns
            long polls off (every request is answered at once).
        versions: Fingerprints of ``(app id, job id)`` keys (``Store.versions``): with
            it, changes made by other processes are found by polling.
        counter: Makes a reading that moves when another connection commits
            (``Store.commit_counter``); the poll reads ``versions`` only when it moved.
        poll_interval: Seconds between two polls while anyone waits.

    Attributes:
        turned_away: Requests answered at once because ``max_waiters`` were waiting.
    """

    def __init__(self, *, max_waiters: int = DEFAULT_MAX_WAITERS,
                 versions: Versions | None = None,
                 counter: Callable[[], Callable[[], int] | None] | None = None,
                 poll_interval: float = DEFAULT_POLL_INTERVAL) -> None:
        self.max_waiters = max_waiters
        self.poll_interval = poll_interval
        self.turned_away = 0
        self._versions = versions
        self._counter = counter
        self._closed = False
        self._reset()
        # Reset in the child right after a fork, while it has one thread: two first
        # requests of a new worker must not race to reset it (the pid checks remain).
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _reset_if_alive(ref))

    def _reset(self) -> None:
        # Per process: a fork inherits neither the waiters nor the poll thread.
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._someone = threading.Condition(self._lock)
        self._by_key: dict[Key, set[Waiter]] = {}
        self._waiters: set[Waiter] = set()
        self._poller: threading.Thread | None = None
        self._stopping = threading.Event()
        self._warned_at = -math.inf

    @property
    def waiting(self) -> int:
        """How many requests of this process wait now."""
        return len(self._waiters) if self._pid == os.getpid() else 0

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called: nobody waits any more."""
        return self._closed

    @contextmanager
    def watching(self, app_id: str, job_ids: Collection[str]) -> Iterator[Waiter | None]:
        """Register a waiter for the jobs for the block, or ``None`` if none may wait now.

        ``None`` when the feed is closed or ``max_waiters`` wait already: answer at once.
        """
        waiter = self._add(frozenset((app_id, job_id) for job_id in job_ids))
        try:
            yield waiter
        finally:
            if waiter is not None:
                self._remove(waiter)

    def notify(self, app_id: str, job_ids: Collection[str]) -> None:
        """Wake whoever waits for one of these jobs (they may have changed)."""
        if not self._waiters or self._pid != os.getpid():
            return
        with self._lock:
            woken = [waiter for job_id in job_ids
                     for waiter in self._by_key.get((app_id, job_id), ())]
        for waiter in woken:
            waiter.wake()

    def close(self) -> None:
        """Wake every waiter (they answer with what they read now) and turn new ones away."""
        if self._pid != os.getpid():
            self._reset()  # a fork: the parent's lock may be held by a thread gone here
        self._closed = True
        self._stopping.set()
        with self._lock:
            waiters = list(self._waiters)
            self._someone.notify_all()
        for waiter in waiters:
            waiter.wake()

    # Waiters ---------------------------------------------------------------------------

    def _add(self, keys: frozenset[Key]) -> Waiter | None:
        if self._pid != os.getpid():
            self._reset()
        if self._closed or self.max_waiters <= 0:
            return None
        if len(self._waiters) >= self.max_waiters:
            with self._lock:
                self.turned_away += 1
            return None
        # Taken before the first read, so a change after it is found whenever it lands.
        baseline = None if self._versions is None else self._baseline(keys)
        waiter = Waiter(keys, baseline)
        with self._lock:
            if len(self._waiters) >= self.max_waiters:
                self.turned_away += 1
                return None
            self._waiters.add(waiter)
            for key in keys:
                self._by_key.setdefault(key, set()).add(waiter)
            if self._versions is not None:
                self._someone.notify()
                if self._poller is None:
                    self._poller = threading.Thread(target=self._poll, name="seenn-long-poll",
                                                    daemon=True)
                    self._poller.start()
        return waiter

    def _baseline(self, keys: frozenset[Key]) -> dict[Key, int] | None:
        assert self._versions is not None
        try:
            return self._versions(keys)
        except Exception:
            # Without it only this process's writes wake the waiter; its time still ends.
            self._warn("seenn serve: reading the jobs a long poll waits for failed")
            return None

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._warned_at >= _WARN_INTERVAL:
            self._warned_at = now
            logger.exception(message)

    def _remove(self, waiter: Waiter) -> None:
        with self._lock:
            self._waiters.discard(waiter)
            for key in waiter.keys:
                found = self._by_key.get(key)
                if found is not None:
                    found.discard(waiter)
                    if not found:
                        del self._by_key[key]

    # Changes made by other processes (SQLite) ------------------------------------------

    def _poll(self) -> None:
        assert self._versions is not None
        counter = self._counter() if self._counter is not None else None
        last: int | None = None
        while not self._closed:
            with self._lock:
                while not self._waiters and not self._closed:
                    self._someone.wait()
            if self._closed:
                return
            if self._stopping.wait(self.poll_interval):
                return
            try:
                if counter is not None:
                    now = counter()
                    if now == last:
                        continue
                    last = now
                self._compare(self._versions)
            except Exception:
                # A locked or broken database: the waiters still answer at their time.
                self._warn("seenn serve: the long-poll check for changes failed")

    def _compare(self, versions: Versions) -> None:
        with self._lock:
            waiters = [w for w in self._waiters if w.baseline is not None]
        keys = {key for waiter in waiters for key in waiter.keys}
        if not keys:
            return
        current = versions(keys)
        for waiter in waiters:
            seen = {key: current[key] for key in waiter.keys if key in current}
            if seen != waiter.baseline:
                waiter.baseline = seen
                waiter.wake()


def _reset_if_alive(ref: weakref.ReferenceType[ChangeFeed]) -> None:
    feed = ref()
    if feed is not None:
        feed._reset()

