"""How long a running job has left: history's shape blended with the job's own pace.

Pure functions, shared by the backend (``seenn serve`` puts the estimate on the
job) and the tracked process (``TrackedJob.eta``, the console), so both show
the same numbers for the same inputs. ``docs/eta.md`` explains the method and
why each constant is what it is.

History, per key (the workflow, else the job type), is made of the last
completed jobs (never failed or cancelled ones). Each gives its duration and
its *progress curve*: at which share of its duration its progress first
reached 0, 2, 4, ... 100 %. A job that reports nothing for a while (a long
encode), starts slowly (model loading) or declares stages that take unequal
time has that shape in its curve, and so does every job of its kind.

The estimate for a running job at progress ``p``, which it first reached at
time ``t_p``:

1. **History's guess** of the job's duration: the median duration, with the
   spread of past durations as its uncertainty (in log space).
2. **The job's own guess**: ``t_p / u(p)``, where ``u(p)`` is the median share
   of the duration at which past jobs reached ``p``; its uncertainty is how
   well that rule predicted past jobs' durations from the same point.
   A third guess uses the *recent* pace: the time the job took over the last
   ``LOOKBACK`` points against the share of the duration history spends there
   (a stage whose pace differs from the rest, such as an upload).
3. The guesses are combined by their precision (a Gaussian product in log space):
   early on history weighs most, late the job's own pace, and for kinds of
   jobs whose early pace says a lot (a steady batch) the job's own guess wins
   sooner.
4. The time left is the combined duration minus the time elapsed, never less
   than a small floor while the job runs; past history's 95th percentile, or
   past its own estimate, the job is *overdue*.

Without usable history, the job's own cumulative rate (``t_p / p``) is used
once ``MIN_PROGRESS`` is done.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CURVE_POINTS",
    "MIN_PROGRESS",
    "MIN_SAMPLES",
    "DurationStats",
    "Eta",
    "History",
    "Sample",
    "curve_of",
    "estimate",
    "history_of",
    "median",
    "percentile",
    "smooth_completion",
    "stats_of",
]

CURVE_POINTS = 51
"""Points of a progress curve: 0, 2, 4, ... 100 %."""

MIN_SAMPLES = 5
"""Completed jobs a key needs before its history is used."""

MIN_PROGRESS = 0.05
"""Progress (a fraction) a job needs before its own pace alone gives an estimate."""

LOOKBACK = 10
"""Curve points (20 % of progress) the *recent* pace looks back over."""

MIN_SPREAD = 0.02
"""The least uncertainty (log space) granted to either guess: no guess is perfect."""

OVERRUN_FLOOR = 0.02
"""The least time left while running, as a share of the estimated duration."""

MAX_RISE = 0.10
"""The most the shown time left may rise in one update, as a share of it..."""

MIN_RISE = 1.0
"""...but at least this many seconds."""

_ROBUST = 1.4826  # median absolute deviation to standard deviation, for a normal law
_STEP = 1 / (CURVE_POINTS - 1)


@dataclass(frozen=True, slots=True)
class DurationStats:
    """What history says about one duration (a whole job, or one stage), in seconds.

    Attributes:
        count: How many completed jobs it comes from.
        p50: The median.
        p95: The 95th percentile.
    """

    count: int
    p50: float
    p95: float

    def to_wire(self) -> dict[str, Any]:
        """As JSON: ``{count, p50Duration, p95Duration}``, durations in whole milliseconds."""
        return {"count": self.count, "p50Duration": round(self.p50 * 1000),
                "p95Duration": round(self.p95 * 1000)}


@dataclass(frozen=True, slots=True)
class Sample:
    """One completed job, as history keeps it.

    Attributes:
        duration: Seconds from running to completed.
        curve: ``CURVE_POINTS`` shares of the duration (0 to 1), at which its
            progress first reached 0, 2, ... 100 % (see :func:`curve_of`).
    """

    duration: float
    curve: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class History:
    """What the completed jobs of one key say, ready for :func:`estimate`.

    Attributes:
        total: The durations' count, median and 95th percentile.
        spread: How widely durations vary: the robust standard deviation of
            their logarithms.
        curve: The median progress curve (``CURVE_POINTS`` shares of the duration).
        errors: At each curve point, how well ``reached_at / curve[i]`` predicted
            past jobs' durations (robust standard deviation, log space).
        recent_errors: The same for the pace over the last ``LOOKBACK`` points
            (see :func:`estimate`).
        stages: Per stage name, its durations (for display; the curve already
            carries the stages' shape).
    """

    total: DurationStats
    spread: float
    curve: tuple[float, ...]
    errors: tuple[float, ...]
    recent_errors: tuple[float, ...] = ()
    stages: Mapping[str, DurationStats] = field(default_factory=dict)

    @property
    def usable(self) -> bool:
        """Whether there are enough samples to use it."""
        return (self.total.count >= MIN_SAMPLES and self.total.p50 > 0
                and len(self.curve) == CURVE_POINTS and len(self.errors) == CURVE_POINTS)

    def to_wire(self) -> dict[str, Any]:
        """This history as JSON: the ``history`` object of ``GET /v1/eta/{etaKey}``.

        Durations are whole milliseconds and shares are rounded to six decimals;
        a spread with nothing behind it (infinite) is ``null``. ``stages`` are not
        included (the answer carries them beside it). A backend that estimates
        from ``History.from_wire(history.to_wire())`` rather than from ``history``
        gives exactly the numbers a process rebuilding it from the answer gives.
        """
        return {"count": self.total.count, "p50Duration": round(self.total.p50 * 1000),
                "p95Duration": round(self.total.p95 * 1000),
                "spread": _wire_float(self.spread),
                "curve": [_wire_float(v) for v in self.curve],
                "errors": [_wire_float(v) for v in self.errors],
                "recentErrors": [_wire_float(v) for v in self.recent_errors]}

    @classmethod
    def from_wire(cls, data: object, stages: object = None) -> History | None:
        """Rebuild a history from :meth:`to_wire`'s JSON; ``None`` if it is not that shape.

        Args:
            data: The ``history`` object of a ``GET /v1/eta/{etaKey}`` answer.
            stages: The answer's ``stages`` (``{name: {count, p50Duration,
                p95Duration}}``), if any; malformed entries are left out.
        """
        if not isinstance(data, Mapping):
            return None
        count = data.get("count")
        p50, p95 = _wire_number(data.get("p50Duration")), _wire_number(data.get("p95Duration"))
        spread = _wire_spread(data.get("spread"))
        curve = _wire_points(data.get("curve"), nulls=False)
        errors = _wire_points(data.get("errors"), nulls=True)
        recent = _wire_points(data.get("recentErrors"), nulls=True)
        if (type(count) is not int or count < 0 or p50 is None or p95 is None
                or spread is None or curve is None or errors is None or recent is None):
            return None
        return cls(DurationStats(count, p50 / 1000, p95 / 1000), spread, curve, errors, recent,
                   _wire_stages(stages))


@dataclass(frozen=True, slots=True)
class Eta:
    """How long a job has left, at one moment.

    Attributes:
        remaining: Seconds left (never negative; a little more than 0 while running).
        confidence: 0 to 1: how far to trust it (from the spread of the combined guess).
        based_on: How many past jobs the estimate uses (0: the job's own pace only).
        overdue: The job has run past what history (or its own pace) expected:
            show "taking longer than usual" rather than a countdown.
    """

    remaining: float
    confidence: float
    based_on: int
    overdue: bool = False


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0 to 1) of sorted values, interpolated linearly."""
    if not sorted_values:
        raise ValueError("no values")
    position = (len(sorted_values) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    weight = position - low
    return sorted_values[low] * (1 - weight) + sorted_values[high] * weight


def stats_of(durations: Sequence[float]) -> DurationStats:
    """The :class:`DurationStats` of some durations (seconds)."""
    ordered = sorted(durations)
    return DurationStats(len(ordered), percentile(ordered, 0.5), percentile(ordered, 0.95))


def curve_point(progress: float) -> int:
    """The index of the last curve point at or below ``progress`` (0 to 1)."""
    return min(max(int(progress * (CURVE_POINTS - 1) + 1e-9), 0), CURVE_POINTS - 1)


def curve_of(reached: Sequence[float | None], duration: float) -> tuple[float, ...]:
    """A job's progress curve from when it first reached each point.

    Args:
        reached: For each of the ``CURVE_POINTS`` points, the seconds after the
            job started running at which its progress first reached it, or
            ``None`` if it never did before completing (it jumped to the end).
        duration: The job's duration in seconds.
    """
    if duration <= 0:
        return tuple(i * _STEP for i in range(CURVE_POINTS))
    shares = []
    last = 0.0
    for index in range(CURVE_POINTS):
        value = reached[index] if index < len(reached) else None
        share = 1.0 if value is None else min(max(value / duration, 0.0), 1.0)
        last = max(last, share)  # reaching a higher point never comes earlier
        shares.append(last)
    shares[0] = 0.0
    return tuple(shares)


def history_of(samples: Sequence[Sample],
               stages: Mapping[str, DurationStats] | None = None) -> History:
    """Summarise completed jobs (the recent ones of one key) for :func:`estimate`."""
    kept = [s for s in samples if s.duration > 0 and len(s.curve) == CURVE_POINTS]
    if not kept:
        zero = tuple(0.0 for _ in range(CURVE_POINTS))
        return History(DurationStats(0, 0.0, 0.0), 0.0, zero, zero, zero, dict(stages or {}))
    logs = [math.log(s.duration) for s in kept]
    curve = tuple(median([s.curve[i] for s in kept]) for i in range(CURVE_POINTS))
    errors = []
    recent_errors = []
    for index in range(CURVE_POINTS):
        # How far off each past job would have been, had this rule judged it here.
        errors.append(_robust_spread([
            math.log(s.curve[index] / curve[index]) for s in kept
            if curve[index] > 0 and s.curve[index] > 0]))
        recent_errors.append(_robust_spread([
            math.log(guess) for s in kept
            if (guess := _recent_share(s.curve, curve, index)) is not None and guess > 0]))
    return History(stats_of([s.duration for s in kept]), _robust_spread(logs), curve,
                   tuple(errors), tuple(recent_errors), dict(stages or {}))


def _recent_share(own: Sequence[float], curve: Sequence[float], index: int) -> float | None:
    """The duration the recent-pace rule predicts, as a share of the true one.

    ``own`` is the job's curve (shares of its own duration): its times at the
    point now and ``LOOKBACK`` points before are ``own[i]`` and ``own[j]``.
    """
    start = max(index - LOOKBACK, 0)
    expected = curve[index] - curve[start]
    if index == 0 or expected <= 0:
        return None
    return own[index] + (own[index] - own[start]) * (1 - curve[index]) / expected


def estimate(elapsed: float, progress: float, *, reached_at: float | None = None,
             history: History | None = None,
             reached_times: Mapping[int, float] | None = None) -> Eta | None:
    """Estimate the time left of a running job.

    Args:
        elapsed: Seconds since the job started running.
        progress: How far it is, 0 to 1.
        reached_at: When (seconds since it started) its progress first reached
            its current value; ``elapsed`` if not known. While a job reports
            nothing new, its pace is judged from the last change, so a quiet
            stretch counts down instead of making the job look slower.
        history: What completed jobs of its key say, if known.
        reached_times: When the job first reached each curve point so far (by
            point index), for the recent pace: the point ``LOOKBACK`` points
            back is the one used.

    Returns:
        The estimate, or ``None`` when there is nothing to go on yet (no usable
        history, and less than ``MIN_PROGRESS`` done).
    """
    if not (math.isfinite(elapsed) and math.isfinite(progress)):
        return None
    elapsed = max(elapsed, 0.0)
    progress = min(max(progress, 0.0), 1.0)
    at = elapsed if reached_at is None or not math.isfinite(reached_at) else \
        min(max(reached_at, 0.0), elapsed)
    if progress >= 1.0:
        return Eta(0.0, 1.0, history.total.count if history is not None else 0)
    if history is None or not history.usable:
        if progress < MIN_PROGRESS or at <= 0:
            return None
        duration = at / progress
        spread = 0.5 * math.sqrt((1 - progress) / progress)
        return _finish(duration, spread, elapsed, progress, 0, None)
    mean = math.log(history.total.p50)
    precision = 1 / max(history.spread, MIN_SPREAD) ** 2
    weighted = mean * precision
    index = curve_point(progress)
    share = history.curve[index]
    guesses: list[tuple[float, float]] = []  # (duration, its log-space spread)
    if index > 0 and share > 0 and at > 0:
        guesses.append((at / share, history.errors[index]))
        start = max(index - LOOKBACK, 0)
        expected = share - history.curve[start]
        since = reached_times.get(start) if reached_times is not None else None
        if since is not None and expected > 0 and len(history.recent_errors) == CURVE_POINTS:
            guesses.append((at + (at - since) * (1 - share) / expected,
                            history.recent_errors[index]))
    for guess, error in guesses:
        if guess > 0 and math.isfinite(error):
            own_precision = 1 / max(error, MIN_SPREAD) ** 2
            weighted += math.log(guess) * own_precision
            precision += own_precision
    duration = math.exp(weighted / precision)
    return _finish(duration, 1 / math.sqrt(precision), elapsed, progress,
                   history.total.count, history.total.p95)


def smooth_completion(previous: float | None, new: float, now: float) -> float:
    """The completion time to show, given the last one shown and a new estimate.

    Moving later (the countdown going back up) is limited to ``MAX_RISE`` of the
    time left (at least ``MIN_RISE`` seconds) per update; moving earlier is
    free; a shown time already past is replaced.
    """
    if previous is None or previous <= now:
        return new
    shown_left = previous - now
    rise = max(shown_left * MAX_RISE, MIN_RISE)
    return min(new, previous + rise)


def _finish(duration: float, spread: float, elapsed: float, progress: float, count: int,
            p95: float | None) -> Eta:
    remaining = duration - elapsed
    floor = OVERRUN_FLOOR * duration * (1 - progress)
    overdue = remaining < floor or (p95 is not None and elapsed > p95)
    # Confidence: the chance the true duration is within 20 % of the guess.
    confidence = math.erf(math.log(1.2) / (max(spread, 1e-6) * math.sqrt(2)))
    return Eta(max(remaining, floor), round(min(confidence, 0.99), 2), count, overdue)


def _robust_spread(values: Sequence[float]) -> float:
    if not values:
        return math.inf
    center = median(values)
    return _ROBUST * median([abs(v - center) for v in values])


def median(values: Sequence[float]) -> float:
    """The median of some values (not sorted beforehand)."""
    return percentile(sorted(values), 0.5)


def _wire_float(value: float) -> float | None:
    return round(value, 6) if math.isfinite(value) else None


def _wire_number(value: object) -> float | None:
    """A finite number >= 0 from JSON (never a bool), else ``None``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) and number >= 0 else None


def _wire_spread(value: object) -> float | None:
    return math.inf if value is None else _wire_number(value)


def _wire_points(value: object, *, nulls: bool) -> tuple[float, ...] | None:
    """``CURVE_POINTS`` numbers (``null`` read as infinite where ``nulls``), else ``None``."""
    if not isinstance(value, list) or len(value) != CURVE_POINTS:
        return None
    points = []
    for item in value:
        number = math.inf if item is None and nulls else _wire_number(item)
        if number is None:
            return None
        points.append(number)
    return tuple(points)


def _wire_stages(value: object) -> dict[str, DurationStats]:
    stages: dict[str, DurationStats] = {}
    if not isinstance(value, Mapping):
        return stages
    for name, item in value.items():
        if not isinstance(name, str) or not isinstance(item, Mapping):
            continue
        count = item.get("count")
        p50 = _wire_number(item.get("p50Duration"))
        p95 = _wire_number(item.get("p95Duration"))
        if type(count) is int and count >= 0 and p50 is not None and p95 is not None:
            stages[name] = DurationStats(count, p50 / 1000, p95 / 1000)
    return stages
