"""Jobs whose worker went silent: the stale limit of ``seenn serve`` and its background sweep.

A worker killed in the middle of a job (SIGKILL, out of memory, a lost machine)
never sends the job's end, so without help the job reads ``running 32%`` for
ever. ``seenn serve`` ends a ``running`` job that has had no write of any kind for
longer than its stale limit as ``failed`` with the error code ``WORKER_LOST``.

``StalePolicy`` decides, from a stored job and the time, whether the job is past its
limit; ``_jobs`` ends such a job through the same path as ``POST .../fail``, on any
read or write that meets it and in ``sweep``. ``Sweeper`` runs ``sweep`` now and
then on a daemon thread, so that parents and lists move even when nobody reads the
silent job itself.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from seenn._core.validation import MAX_STALE_AFTER, MIN_STALE_AFTER, fail, format_datetime
from seenn.server._transaction import StoredJob

logger = logging.getLogger("seenn.server")

DEFAULT_STALE_AFTER = 300.0
WORKER_LOST = "WORKER_LOST"
# The longest pause between two sweeps, and the shortest: about a tenth of the limit.
_MAX_SWEEP_INTERVAL = 30.0
_MIN_SWEEP_INTERVAL = 1.0
_WARN_INTERVAL = 60.0


def check_stale_after(field: str, value: object) -> float:
    """Check a server-wide stale limit: 0 (off) or ``MIN_STALE_AFTER`` to ``MAX_STALE_AFTER`` s."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) \
            or not (value == 0 or MIN_STALE_AFTER <= value <= MAX_STALE_AFTER):
        fail(field, f"must be 0 (off) or a number of seconds from {MIN_STALE_AFTER} to "
                    f"{MAX_STALE_AFTER}, got {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True)
class StalePolicy:
    """When a running job counts as abandoned by its worker.

    Attributes:
        default: The limit in seconds of a job that did not set its own
            (``staleAfterSeconds``); 0 when the server has none.
        since: When this server started. A job's silence counts from no earlier
            than this, so a server that was down for a while gives every worker one
            whole limit to be heard from again before its job is ended.
    """

    default: float
    since: float

    def limit(self, stored: StoredJob) -> float | None:
        """The job's stale limit in seconds, or ``None`` if it has none."""
        limit = stored.stale_after if stored.stale_after is not None else self.default
        return limit if limit > 0 else None

    def is_stale(self, stored: StoredJob, now: float) -> bool:
        """Whether the job is running and silent for longer than its limit at ``now``.

        The comparisons are written as the sweep's SQL writes them (see
        ``Store.stale_jobs``), so both agree on every job to the last bit.
        """
        idle_since = stored.idle_since
        if idle_since is None or stored.data.get("status") != "running":
            return False
        if stored.stale_after is not None:
            own = stored.stale_after
            return idle_since + own < now and own < now - self.since
        if self.default <= 0:
            return False
        return idle_since < now - self.default and self.since < now - self.default

    def error(self, stored: StoredJob) -> dict[str, Any]:
        """The ``error`` a stale job is failed with (as a ``POST .../fail`` body has it)."""
        limit = self.limit(stored) or 0.0
        shown = f"{limit:g}"
        last = stored.idle_since if stored.idle_since is not None else self.since
        return {"code": WORKER_LOST,
                "message": f"no update from the job's worker for more than {shown} s: its "
                           "process is gone (killed, out of memory or lost)",
                "details": {"staleAfterSeconds": int(limit) if limit.is_integer() else limit,
                            "lastUpdateAt": format_datetime(
                                datetime.fromtimestamp(last, tz=timezone.utc))}}

    @property
    def sweep_interval(self) -> float:
        """Seconds between two background sweeps: a tenth of the limit, within 1 to 30."""
        if self.default <= 0:
            # Only jobs with their own limit can go stale; reads still end them at once.
            return _MAX_SWEEP_INTERVAL
        return min(max(self.default / 10, _MIN_SWEEP_INTERVAL), _MAX_SWEEP_INTERVAL)


class Sweeper:
    """Calls ``sweep`` every ``interval`` seconds on a daemon thread, until stopped.

    Started once per process: after a ``fork`` (a pre-forking WSGI server), the next
    :meth:`start` starts a new thread in the child. Once :meth:`stop` was called it
    never starts again. An exception in ``sweep`` (a locked or broken database) is
    logged, at most once a minute, and the next sweep runs as planned.

    Attributes:
        interval: Seconds between the end of one sweep and the start of the next;
            read before every wait, so it may be changed while the thread runs.
    """

    def __init__(self, sweep: Callable[[], int], interval: float) -> None:
        self.interval = interval
        self._sweep = sweep
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._warned_at = -math.inf

    def start(self) -> None:
        """Start the thread in this process if it is not running yet (cheap when it is)."""
        if self._pid == os.getpid() or self._stopped:
            return
        with self._lock:
            if self._pid == os.getpid() or self._stopped:
                return
            # A fresh event: one inherited through fork may hold a lock of a dead thread.
            self._wake = threading.Event()
            self._thread = threading.Thread(target=self._run, args=(self._wake,),
                                            name="seenn-stale-sweep", daemon=True)
            self._thread.start()
            self._pid = os.getpid()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread (waiting up to ``timeout`` for a sweep in progress)."""
        with self._lock:
            self._stopped = True
            thread = self._thread if self._pid == os.getpid() else None
            self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    @property
    def running(self) -> bool:
        """Whether the thread of this process is alive."""
        thread = self._thread
        return self._pid == os.getpid() and thread is not None and thread.is_alive()

    def _run(self, wake: threading.Event) -> None:
        while not wake.wait(self.interval):
            try:
                self._sweep()
            except Exception:
                now = time.monotonic()
                if now - self._warned_at >= _WARN_INTERVAL:
                    self._warned_at = now
                    logger.exception("seenn serve: the sweep for silent jobs failed; it is "
                                     "tried again every %g s", self.interval)
