"""The ETA prior: what the backend says about each job type, fetched for the process-wide cache.

``TrackedJob.eta`` and the console weigh a job's own pace against what completed
jobs of its type took. The backend keeps those statistics (``GET
/v1/eta/{etaKey}``); this module brings them into the prior cache of
``seenn._core.eta_live``:

* When ``export()`` sees a job type start (or a job resumed here) and the type was
  not asked for within ``interval``, the type is queued; a thread of its own (made
  on the first one) sends ``GET /v1/eta/{jobType}`` through the exporter's client,
  one at a time. ``export()`` only looks up a dict and appends to a deque: it never
  waits for the answer, nor does the tracked code, nor the delivery of events.
* An answer with the backend's ``history`` (``seenn serve``) is rebuilt into the
  same :class:`~seenn._core.eta.History` the backend estimates with; one with the
  statistics only (``count``, ``p50Duration``, ``p95Duration``) gives a prior that
  takes the pace as steady.
* 404 (no job of the type has completed, or its statistics were reset) forgets
  the type's prior. 401/403 (a backend or a key without the endpoint) and 429
  stop every fetch for ``interval``. Any other error leaves the cache as it was.
  Whatever the outcome, a type is asked for at most once per ``interval``.
* Nothing is logged above debug level, and never the key (only the job type and
  the status).
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from seenn._client.transport import quote_id
from seenn._core.eta import DurationStats, History
from seenn._core.eta_live import history_from_stats, set_prior
from seenn.errors import AuthenticationError, NotFoundError, RateLimitError, SeennError
from seenn.exporters._http.state import remember

if TYPE_CHECKING:
    from seenn._client.client import SeennClient
    from seenn.exporters._http.state import DeliveryStats

__all__ = ["DEFAULT_INTERVAL", "Priors", "history_of_answer"]

logger = logging.getLogger("seenn")

DEFAULT_INTERVAL = 300.0
"""Seconds between two fetches of one job type's history (``eta_history_interval``)."""


class Priors:
    """Fetches job types' ETA history into the prior cache, on a thread of its own.

    Args:
        client: Returns the exporter's client (read at each fetch: a forked child
            gets a new one).
        stats: Returns the exporter's counters (``eta_fetches``).
        interval: The least time between two fetches of one type, in seconds.
        clock: A monotonic clock (a seam for tests).
    """

    def __init__(self, client: Callable[[], SeennClient], stats: Callable[[], DeliveryStats],
                 interval: float, clock: Callable[[], float]) -> None:
        self._client = client
        self._stats = stats
        self.interval = interval
        self._clock = clock
        self._cond = threading.Condition(threading.Lock())
        self._due: dict[str, float] = {}  # type -> when it may be asked for again
        self._wanted: deque[str] = deque()
        self._paused_until = 0.0
        self._thread: threading.Thread | None = None
        self._closed = False

    def want(self, key: str) -> None:
        """A job of type ``key`` starts: have its history fetched, unless it was lately.

        Cheap and never waits on I/O: a dict lookup, and under a lock held only
        by this bookkeeping, an append.
        """
        now = self._clock()
        due = self._due.get(key)
        if due is not None and now < due:
            return
        with self._cond:
            due = self._due.get(key)
            if self._closed or now < self._paused_until or (due is not None and now < due):
                return
            remember(self._due, key, now + self.interval)
            self._wanted.append(key)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="seenn-eta-prior",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()

    def alive(self) -> bool:
        """Whether the fetching thread is running (perhaps in a call)."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def close(self, timeout: float) -> None:
        """Stop fetching; wait up to ``timeout`` seconds for a call in flight to end."""
        with self._cond:
            self._closed = True
            self._wanted.clear()
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(timeout, 0.0))

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._wanted and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                key = self._wanted.popleft()
            try:
                self._fetch(key)
            except Exception as exc:  # a bug must not end the thread
                logger.debug("seenn: HTTP exporter: ETA history of job type %r: internal "
                             "error %r", key, exc)

    def _fetch(self, key: str) -> None:
        self._stats().eta_fetches += 1
        try:
            answer = self._client()._http.send_once("GET", f"/eta/{quote_id(key)}")
        except NotFoundError:
            # No job of the type has completed yet (or its statistics were reset).
            set_prior(key, None)
            logger.debug("seenn: HTTP exporter: no ETA history for job type %r yet", key)
            return
        except (AuthenticationError, RateLimitError) as error:
            # A backend or a key without the endpoint, or a limit: ask for nothing
            # for a while (a 429's wait, if longer).
            wait = max(self.interval, float(getattr(error, "retry_after", None) or 0.0))
            with self._cond:
                self._paused_until = self._clock() + wait
            logger.debug("seenn: HTTP exporter: ETA history not available (HTTP %s); asking "
                         "again in %.0f s", error.status_code, wait)
            return
        except SeennError as error:
            logger.debug("seenn: HTTP exporter: ETA history of job type %r not fetched "
                         "(%s); asking again in %.0f s", key, error.code, self.interval)
            return
        history = history_of_answer(answer)
        if history is None:
            logger.debug("seenn: HTTP exporter: the ETA history of job type %r has a shape "
                         "this version does not read", key)
            return
        set_prior(key, history)


def history_of_answer(answer: object) -> History | None:
    """The :class:`History` in a ``GET /v1/eta/{etaKey}`` answer, or ``None``.

    ``seenn serve`` puts the estimator's own summary under ``history``
    (:meth:`History.to_wire`), with ``stages`` beside it: it is rebuilt exactly as
    the backend rebuilds it to estimate. A backend sending only the statistics
    (``count``, ``p50Duration``, ``p95Duration``, in milliseconds) gets a prior that
    takes the pace as steady.
    """
    if not isinstance(answer, Mapping):
        return None
    found = History.from_wire(answer.get("history"), answer.get("stages"))
    if found is not None:
        return found
    count = answer.get("count")
    p50, p95 = _milliseconds(answer.get("p50Duration")), _milliseconds(answer.get("p95Duration"))
    if type(count) is not int or count < 0 or p50 is None or p95 is None:
        return None
    return history_from_stats(DurationStats(count, p50, p95))


def _milliseconds(value: object) -> float | None:
    """Seconds from a finite number of milliseconds >= 0 (never a bool), else ``None``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number / 1000 if math.isfinite(number) and number >= 0 else None
