"""The estimator of ``seenn._core.eta`` in a running process: a job's record, priors, wording.

* :class:`Run` is what whoever follows a running job keeps for
  :func:`~seenn._core.eta.estimate`: when it started running, where its progress
  started, when its progress first reached each curve point and when it last
  changed. The console exporter keeps one for each job it shows, from the events'
  timestamps; ``TrackedJob`` keeps the same fields in slots of its own (cheaper on
  its hot path) and estimates with :func:`estimate_run` (its ``eta``).
* The *prior cache* holds, per key (a job type), what the backend says about
  completed jobs of that key (a :class:`~seenn._core.eta.History`). The HTTP
  exporter fills it; ``TrackedJob.eta`` and the console read it. It is
  process-wide, thread-safe, and bounded (the least recently stored key goes
  first).
* :func:`describe` words an estimate the way people read durations.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Sequence

from seenn._core.eta import (
    CURVE_POINTS,
    MIN_SPREAD,
    DurationStats,
    Eta,
    History,
    estimate,
)

__all__ = [
    "MAX_PRIORS",
    "Run",
    "clear_priors",
    "describe",
    "estimate_run",
    "format_duration",
    "history_from_stats",
    "next_mark",
    "prior",
    "prior_age",
    "reached_times",
    "set_prior",
]

MAX_PRIORS = 1024
"""Keys the prior cache holds at most."""

_Z95 = 1.6449  # the 95th percentile of a standard normal law


class Run:
    """A running job's progress over time, as :func:`~seenn._core.eta.estimate` needs it.

    Times are in seconds on one clock (the events' ``time.time()``); progress is a
    whole percent. Recording costs a comparison per change, and two appends when
    the progress passes a new curve point (every 2 %), however far it jumps.

    Attributes:
        began: When the job started running (here).
        base: Its progress then.
        progress: Its progress now.
        moved: When its progress last changed.
        crossings: Each time the progress passed a new curve point, that progress
            and the time, flattened: ``[progress, time, progress, time, ...]``.
        next_mark: The percent at which the next curve point is passed.
    """

    __slots__ = ("base", "began", "crossings", "moved", "next_mark", "progress")

    def __init__(self, began: float, progress: int = 0) -> None:
        progress = min(max(progress, 0), 100)
        self.began = began
        self.base = progress
        self.progress = progress
        self.moved = began
        self.crossings: list[float] = []
        self.next_mark = next_mark(progress)

    def advance(self, progress: int, at: float) -> None:
        """Record that the progress changed to ``progress`` at time ``at``."""
        self.progress = progress
        self.moved = at
        if progress >= self.next_mark:
            self.crossings += (progress, at)
            self.next_mark = next_mark(progress)

    def estimate(self, now: float, history: History | None = None) -> Eta | None:
        """The estimate at time ``now``, with ``history`` as the prior if known."""
        return estimate_run(now, self.began, self.progress, self.moved, base=self.base,
                            crossings=self.crossings, history=history)


def next_mark(progress: int) -> int:
    """The percent of the first curve point above ``progress`` (points are every 2 %)."""
    return progress - progress % 2 + 2


def reached_times(began: float, base: int, crossings: Sequence[float]) -> dict[int, float]:
    """When (seconds after ``began``) a run first reached each curve point so far.

    Points up to ``base`` count as reached at the start; a jump over several points
    reaches them all at once (as :func:`~seenn._core.eta.curve_of` reads them).
    """
    last = base // 2
    times = dict.fromkeys(range(last + 1), 0.0)
    for k in range(0, len(crossings) & ~1, 2):  # even: an append may be half done
        point = min(int(crossings[k]) // 2, CURVE_POINTS - 1)
        at = crossings[k + 1] - began
        while last < point:
            last += 1
            times[last] = at
    return times


def estimate_run(now: float, began: float, progress: int, moved: float, *, base: int = 0,
                 crossings: Sequence[float] = (),
                 history: History | None = None) -> Eta | None:
    """The estimate at ``now`` of a job recorded as a :class:`Run` (see its attributes).

    A job that started running at a progress above 0 (resumed here from another
    process) is judged by its own pace since then, over what was left: how long it
    ran before is not known, so history's curve cannot place it.
    """
    elapsed = now - began
    if base > 0:
        left = 100 - base
        done = 1.0 if left <= 0 else (progress - base) / left
        return estimate(elapsed, done, reached_at=moved - began)
    if history is None or not history.usable:
        return estimate(elapsed, progress / 100, reached_at=moved - began)
    return estimate(elapsed, progress / 100, reached_at=moved - began, history=history,
                    reached_times=reached_times(began, base, crossings))


# -- the prior cache ---------------------------------------------------------------------

# key -> (history, when stored on the monotonic clock). Reads take no lock: a dict
# lookup is atomic; writes (rare: a fetch every few minutes per key) take it.
_priors: dict[str, tuple[History, float]] = {}
_priors_lock = threading.Lock()


def _after_fork_in_child() -> None:
    global _priors_lock
    _priors_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def set_prior(key: str, history: History | None) -> None:
    """Store what history says about ``key`` for every estimate in this process.

    ``None`` forgets the key (the backend no longer has statistics for it).
    Past ``MAX_PRIORS`` keys, the one stored longest ago is forgotten.
    """
    with _priors_lock:
        _priors.pop(key, None)
        if history is not None:
            _priors[key] = (history, time.monotonic())
            while len(_priors) > MAX_PRIORS:
                del _priors[next(iter(_priors))]


def prior(key: str) -> History | None:
    """What history says about ``key``, if it was stored."""
    entry = _priors.get(key)
    return entry[0] if entry is not None else None


def prior_age(key: str) -> float | None:
    """Seconds since the prior of ``key`` was stored, or ``None`` if there is none."""
    entry = _priors.get(key)
    return time.monotonic() - entry[1] if entry is not None else None


def clear_priors() -> None:
    """Forget every prior (for tests)."""
    with _priors_lock:
        _priors.clear()


def history_from_stats(stats: DurationStats) -> History:
    """A prior from duration statistics alone (a backend that sends no progress curve).

    The pace is taken as steady (a straight curve), the spread of durations is read
    off the median and the 95th percentile, and the job's own pace is trusted as
    much as it is without history. Below ``MIN_SAMPLES`` jobs it is not used.
    """
    p50, p95 = stats.p50, stats.p95
    spread = math.log(p95 / p50) / _Z95 if p95 > p50 > 0 else MIN_SPREAD
    step = 1 / (CURVE_POINTS - 1)
    curve = tuple(i * step for i in range(CURVE_POINTS))
    errors = tuple(math.inf if i == 0 else 0.5 * math.sqrt((1 - i * step) / (i * step))
                   for i in range(CURVE_POINTS))
    return History(DurationStats(stats.count, p50, p95), spread, curve, errors)


# -- wording -----------------------------------------------------------------------------


def format_duration(seconds: float) -> str:
    """A duration as people read it: ``"8 s"``, ``"45 s"``, ``"1 min 20 s"``, ``"2 h 15 min"``.

    The finer unit goes as the duration grows: no false precision.
    """
    if not math.isfinite(seconds) or seconds < 9.5:
        return f"{max(1, round(seconds)) if math.isfinite(seconds) else 1} s"
    if seconds < 57.5:
        return f"{round(seconds / 5) * 5} s"
    if seconds < 595:
        minutes, rest = divmod(round(seconds / 10) * 10, 60)
        return f"{minutes} min {rest} s" if rest else f"{minutes} min"
    if seconds < 3570:
        return f"{round(seconds / 60)} min"
    if seconds < 35850:
        hours, rest = divmod(round(seconds / 300) * 5, 60)
        return f"{hours} h {rest} min" if rest else f"{hours} h"
    return f"{round(seconds / 3600)} h"


def describe(remaining: float, *, overdue: bool = False) -> str:
    """How an estimate reads: ``"~1 min 20 s left"``, or ``"taking longer than usual"``."""
    if overdue:
        return "taking longer than usual"
    return f"~{format_duration(remaining)} left"
