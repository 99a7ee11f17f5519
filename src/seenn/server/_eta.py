"""ETA on ``seenn serve``: statistics of completed jobs per eta key, and running jobs' estimates.

A job's eta key is its ``workflowId`` (which defaults to its ``jobType``). The
estimator itself is ``seenn._core.eta``, shared with the tracked process; this module
keeps what it needs and puts its answer on the job:

* **Per job** (the ``eta`` column, never in the job's JSON): when it started running
  (``s``), when its progress first reached each curve point (``r``: seconds since
  ``s`` for points 0, 1, ... so far; reaching a point reaches every point below it,
  so they are a prefix), its progress now and since when (``v``), its stage now and
  since when (``c``) with the time spent in earlier stages (``t``), the completion
  time last shown (``e``), and whether the client gave an ETA of its own (``x``).
  Each progress write updates it in the write's transaction.
* **Per app and eta key** (``eta_stats``): the all-time count, sum, minimum and
  maximum of the durations of completed jobs, and a window of the last ``WINDOW``
  (each a ``Sample``: duration and progress curve) with, per stage name, the last
  ``WINDOW`` durations. A completion updates the row; the window gives the
  percentiles and the estimator's ``History``, cached in the row (``detail``) as the
  answer of ``GET /v1/eta/{key}`` carries it, so that a progress write reads one
  small column and a process rebuilding the history from that answer gets the same
  numbers as the server.

Only jobs completed by a ``complete`` call after running (``startedAt`` set by a
progress call, and a positive running time) count; failed jobs, stale ones
(``WORKER_LOST``) and declared parents, which complete through their children, never
do. A duration is ``completedAt - startedAt``: running time, not the wait before it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from typing import Any

from seenn._core.eta import (
    CURVE_POINTS,
    MIN_SAMPLES,
    MIN_SPREAD,
    History,
    Sample,
    curve_of,
    curve_point,
    estimate,
    history_of,
    smooth_completion,
    stats_of,
)
from seenn._core.validation import MAX_JOB_TYPE, check_text, format_datetime, parse_datetime
from seenn.errors import ValidationError
from seenn.server._errors import HTTPError, Response
from seenn.server._json import dumps, loads
from seenn.server._store import Store
from seenn.server._transaction import EtaRow, StoredJob, Transaction

RECOMPUTE_EVERY = 8
"""With a full window, the summary of a key is recomputed every this many completions..."""

RECOMPUTE_AFTER = 60.0
"""...or when it is older than this many seconds."""

WINDOW = 128
"""Completed jobs (and durations per stage) a key's recent window keeps."""

MAX_STAGES = 32
"""Stage names followed per job and per key; past it, a job's new names go uncounted and a
key forgets the name it saw least recently."""

LIST_LIMIT = 1000
"""Keys ``GET /v1/eta`` answers at most, the most recently updated first."""

# What the server sets for an automatic ETA (an explicit one is the client's own field).
AUTOMATIC = ("estimatedCompletionAt", "etaConfidence", "etaBasedOn", "etaOverdue")
_WITHIN = math.log(1.2)
# Parsed histories by the text of their key's detail column (see cached_history).
_MAX_HISTORIES = 256
_YEAR_10000 = 253402300800.0
_gmtime = time.gmtime
_strftime = time.strftime
_histories: dict[str, History | None] = {}


# Per job ----------------------------------------------------------------------------


def _load(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        state = loads(text)
    except ValueError:
        return {}
    return state if isinstance(state, dict) else {}


_dump = dumps


def _state(stored: StoredJob) -> dict[str, Any]:
    if stored.eta is None:
        # A job of a version without ETA: any estimate it holds was the client's.
        return {"x": 1} if "estimatedCompletionAt" in stored.data else {}
    state = _load(stored.eta)
    if "s" in state or "r" in state:
        _upgrade(state)
    return state


def _upgrade(state: dict[str, Any]) -> None:
    """Times kept in seconds by 0.1.0 ("s", "r", "v", "e") as the milliseconds kept now
    ("b", "m", "w", "f")."""
    start, reached = state.pop("s", None), state.pop("r", None)
    last, shown = state.pop("v", None), state.pop("e", None)
    try:
        if start is not None:
            state["b"] = round(float(start) * 1000)
        if reached is not None:
            state["m"] = [round(float(seconds) * 1000) for seconds in reached]
        if last is not None:
            state["w"] = [int(last[0]), round(float(last[1]) * 1000)]
        if shown is not None:
            state["f"] = round(float(shown) * 1000)
    except (TypeError, ValueError, IndexError, OverflowError):
        # Unreadable: the job's timing starts again from its next progress.
        for name in ("b", "m", "w", "f"):
            state.pop(name, None)


def eta_key(job: Mapping[str, Any]) -> str:
    """The key of a job's statistics: its ``workflowId``, else its ``jobType``."""
    return str(job.get("workflowId") or job.get("jobType"))


def _iso(timestamp: float) -> str | None:
    if 0.0 <= timestamp < _YEAR_10000:
        # Years 1970 to 9999: time's C functions, twice as fast as datetime's, and each
        # progress write formats one ETA. (strftime("%Y") pads no year below 1000.)
        # Whole microseconds of the fraction first, as datetime.fromtimestamp rounds them.
        fraction, whole = math.modf(timestamp)
        seconds, micros = int(whole), round(fraction * 1_000_000)
        if micros >= 1_000_000:
            seconds, micros = seconds + 1, micros - 1_000_000
        return (_strftime("%Y-%m-%dT%H:%M:%S", _gmtime(seconds))
                + f".{micros // 1000:03d}Z")
    try:
        return format_datetime(datetime.fromtimestamp(timestamp, tz=timezone.utc))
    except (OverflowError, OSError, ValueError):
        return None


def _enter_stage(state: dict[str, Any], stage: object, now: float) -> None:
    """Note a stage transition: the time spent in the stage left goes to its total."""
    if not isinstance(stage, Mapping) or not isinstance(stage.get("name"), str):
        return
    name = stage["name"]
    current = state.get("c")
    if current is not None and current[0] == name:
        return
    if current is not None:
        totals: dict[str, float] = state.setdefault("t", {})
        if current[0] in totals or len(totals) < MAX_STAGES:
            totals[current[0]] = round(totals.get(current[0], 0.0) + max(now - current[1], 0.0),
                                       3)
    state["c"] = [name, now]


def start_state(job: Mapping[str, Any], values: Mapping[str, Any], now: float) -> str:
    """The ETA state of a new job: whether its ETA is its own, and the stage it starts in."""
    state: dict[str, Any] = {}
    if "estimatedCompletionAt" in values or "estimatedDuration" in values:
        state["x"] = 1
    _enter_stage(state, job.get("stage"), now)
    return _dump(state)


def on_progress(tx: Transaction, stored: StoredJob, job: dict[str, Any],
                values: Mapping[str, Any]) -> str:
    """Follow a progress write (``job`` already changed) and set the job's ETA fields.

    Returns:
        The job's new ETA state, to store with it.
    """
    now = tx.now
    state = _state(stored)
    _enter_stage(state, values.get("stage"), now)
    if "estimatedCompletionAt" in values:
        state["x"] = 1  # the client's ETA wins from now on
        state.pop("f", None)
        for name in AUTOMATIC[1:]:
            job.pop(name, None)
    running = job.get("status") == "running"
    if running:
        began = state.get("b")
        if began is None:
            began = state["b"] = round(1000 * (now if stored.eta is not None
                                               else _timestamp(job.get("startedAt"), now)))
        elapsed = max(now - began / 1000, 0.0)
        progress = int(job.get("progress", 0))
        # Times since the start in whole milliseconds: ints read and write as JSON at a
        # fraction of the cost of floats, and every progress write does both.
        reached: list[int] | None = state.get("m")
        if reached is None:
            reached = state["m"] = []
        point = curve_point(progress / 100)
        if len(reached) <= point:
            reached.extend([round(elapsed * 1000)] * (point + 1 - len(reached)))
        last = state.get("w")
        if last is None or last[0] != progress:
            last = state["w"] = [progress, round(elapsed * 1000)]
        if not state.get("x"):
            _estimate(tx, job, state, elapsed, progress, reached, last[1])
        return _dump(state)
    if not state.get("x"):
        _drop(job, state)  # back in a queue: no countdown while it waits
    return _dump(state)


def _estimate(tx: Transaction, job: dict[str, Any], state: dict[str, Any], elapsed: float,
              progress: int, reached: list[int], reached_at: int) -> None:
    """Put the automatic ETA of a running job on it (or take it off if there is none)."""
    now = tx.now
    history = cached_history(tx, eta_key(job))
    found = estimate(elapsed, progress / 100, reached_at=reached_at / 1000, history=history,
                     reached_times=None if history is None else _Seconds(reached))
    previous = state.get("f")
    shown = None if found is None else smooth_completion(
        None if previous is None else previous / 1000, now + found.remaining, now)
    if shown is not None and math.isfinite(shown):
        # To the millisecond, as kept: the next write smooths from exactly what was shown.
        shown = round(shown * 1000) / 1000
    text = None if shown is None else _iso(shown)
    if found is None or shown is None or text is None:
        _drop(job, state)
        return
    state["f"] = round(shown * 1000)
    job.update(estimatedCompletionAt=text, etaConfidence=found.confidence,
               etaBasedOn=found.based_on)
    if found.overdue:
        job["etaOverdue"] = True
    else:
        job.pop("etaOverdue", None)


class _Seconds(Mapping[int, float]):
    """A job's curve-point times in seconds, by point, read from the milliseconds kept.

    ``estimate`` looks up one point of the 51; converting them all into a dict on
    every progress write of a key with history cost more than the estimate itself.
    """

    __slots__ = ("_ms",)

    def __init__(self, ms: list[int]) -> None:
        self._ms = ms

    def __getitem__(self, index: int) -> float:
        if type(index) is int and 0 <= index < len(self._ms):
            return self._ms[index] / 1000
        raise KeyError(index)

    def __len__(self) -> int:
        return len(self._ms)

    def __iter__(self) -> Iterator[int]:
        return iter(range(len(self._ms)))


def _drop(job: dict[str, Any], state: dict[str, Any]) -> None:
    for name in AUTOMATIC:
        job.pop(name, None)
    state.pop("f", None)


def _timestamp(value: object, default: float) -> float:
    parsed = parse_datetime(value)
    return default if parsed is None else parsed.timestamp()


def cached_history(tx: Transaction, key: str) -> History | None:
    """The history of an eta key as ``GET /v1/eta/{key}`` answers it (one column read)."""
    text = tx.eta_detail(key)
    if not text:
        return None
    # Parsed once per text: every progress write of a running job of the key asks, and
    # the text changes only when a completion updates the key's statistics.
    if text in _histories:
        return _histories[text]
    detail = _load(text)
    history = History.from_wire(detail.get("history"), detail.get("stages")) if detail else None
    if len(_histories) >= _MAX_HISTORIES:
        _histories.clear()
    _histories[text] = history
    return history


def on_end(tx: Transaction, stored: StoredJob, job: dict[str, Any]) -> None:
    """Follow a job's end (``job`` already changed): a completed job that ran feeds its key.

    The last estimate stays on the job as it was shown; ``etaOverdue`` goes.
    """
    job.pop("etaOverdue", None)
    if job.get("status") != "completed":
        return
    state = _state(stored)
    began = state.get("b")
    if not isinstance(began, (int, float)):
        return  # it never ran: no duration
    duration = tx.now - began / 1000
    if not duration > 0:
        return
    reached: list[float | None] = [ms / 1000 for ms in state.get("m", [])[:CURVE_POINTS]]
    reached += [None] * (CURVE_POINTS - len(reached))
    stages = dict(state.get("t", {}))
    current = state.get("c")
    if current is not None and (current[0] in stages or len(stages) < MAX_STAGES):
        stages[current[0]] = stages.get(current[0], 0.0) + max(tx.now - current[1], 0.0)
    record(tx, eta_key(job), Sample(duration, curve_of(reached, duration)), stages)


# Per key ----------------------------------------------------------------------------


def key_confidence(history: History) -> float:
    """How far to trust a key's statistics, 0 to 0.99.

    The chance that a job of the key takes within 20 % of the median, if durations
    spread as the window's do (log-normal with its robust spread), discounted for a
    small window by ``n / (n + MIN_SAMPLES)``: one job gives 0.17 at most, five 0.5.
    """
    count = history.total.count
    if count == 0:
        return 0.0
    within = math.erf(_WITHIN / (max(history.spread, MIN_SPREAD) * math.sqrt(2)))
    return round(min(within * count / (count + MIN_SAMPLES), 0.99), 2)


def record(tx: Transaction, key: str, sample: Sample, stages: Mapping[str, float]) -> None:
    """Add a completed job (and its time per stage) to the statistics of ``key``."""
    row = tx.eta_row(key, window=True)
    window = _load(row.window) if row is not None else {}
    samples: list[Any] = window.setdefault("s", [])
    samples.append([round(sample.duration, 3), [round(v, 5) for v in sample.curve]])
    del samples[:-WINDOW]
    recent_stages: dict[str, list[float]] = window.setdefault("g", {})
    for name, seconds in stages.items():
        recent = recent_stages.pop(name, [])  # re-inserted last: most recently seen
        recent.append(round(seconds, 3))
        del recent[:-WINDOW]
        recent_stages[name] = recent
    while len(recent_stages) > MAX_STAGES:
        del recent_stages[next(iter(recent_stages))]
    count, total, low, high = ((1, sample.duration, sample.duration, sample.duration)
                               if row is None else
                               (row.count + 1, row.total + sample.duration,
                                min(row.min, sample.duration), max(row.max, sample.duration)))
    if (row is not None and len(samples) >= WINDOW and count % RECOMPUTE_EVERY
            and tx.now - window.get("t", 0.0) < RECOMPUTE_AFTER):
        # A full window moves little with one more job: the summary (a few ms of
        # work inside the write lock) is recomputed every RECOMPUTE_EVERY jobs.
        tx.put_eta_row(EtaRow(key, count, total, low, high, row.p50, row.p95, row.confidence,
                              tx.now, row.detail, _dump(window)))
        return
    window["t"] = tx.now
    history = history_of([Sample(d, tuple(c)) for d, c in samples],
                         {name: stats_of(d) for name, d in recent_stages.items() if d})
    wire = history.to_wire()
    detail = {"stages": {name: s.to_wire() for name, s in history.stages.items()},
              "history": wire}
    tx.put_eta_row(EtaRow(key, count, total, low, high, wire["p50Duration"] / 1000,
                          wire["p95Duration"] / 1000, key_confidence(history), tx.now,
                          _dump(detail), _dump(window)))


def stats_answer(row: EtaRow, *, detail: bool) -> dict[str, Any]:
    """The ``EtaStats`` of a key; with ``detail``, its ``stages`` and ``history`` too."""
    body: dict[str, Any] = {
        "etaKey": row.eta_key, "count": row.count,
        "avgDuration": round(row.total / row.count * 1000) if row.count else 0,
        "p50Duration": round(row.p50 * 1000), "p95Duration": round(row.p95 * 1000),
        "minDuration": round(row.min * 1000), "maxDuration": round(row.max * 1000),
        "confidence": row.confidence,
        "lastUpdated": _iso(row.last_updated) or _iso(0.0),
    }
    if detail:
        extra = _load(row.detail)
        body["stages"] = extra.get("stages", {})
        if "history" in extra:
            body["history"] = extra["history"]
    return body


def _check_key(value: str) -> str:
    try:
        return check_text("etaKey", value, max_len=MAX_JOB_TYPE)
    except ValidationError as error:
        reason = str((error.details or {}).get("reason", error.message))
        raise HTTPError(400, "VALIDATION_ERROR", f"etaKey: {reason}",
                        {"field": "etaKey", "reason": reason,
                         "fields": {"etaKey": reason}}) from None


def eta_request(store: Store, app_id: str, method: str, route: tuple[str, ...]) -> Response:
    """Answer ``GET /v1/eta``, ``GET /v1/eta/{key}`` or ``DELETE /v1/eta/{key}``."""
    if len(route) == 1:
        with store.read(app_id) as tx:
            rows = tx.eta_rows(LIST_LIMIT)
        return 200, {"stats": [stats_answer(row, detail=False) for row in rows]}, {}
    missing = HTTPError(404, "NOT_FOUND", "no ETA statistics for this key: no job of it has "
                        "completed yet, or they were reset", {"field": "etaKey"})
    if "\x00" in route[1]:
        raise missing  # no job could have made it: jobType and workflowId refuse NUL
    key = _check_key(route[1])
    if method == "DELETE":
        with store.write(app_id) as tx:
            removed = tx.delete_eta_row(key)
        if not removed:
            raise missing
        return 200, {"etaKey": key, "reset": True}, {}
    with store.read(app_id) as tx:
        row = tx.eta_row(key)
    if row is None:
        raise missing
    return 200, stats_answer(row, detail=True), {}


def shown(job: Any, now: float) -> Any:
    """A job as answered at ``now``: running past its ``estimatedCompletionAt``, overdue."""
    if not isinstance(job, dict) or job.get("status") != "running" or job.get("etaOverdue"):
        return job
    when = parse_datetime(job.get("estimatedCompletionAt"))
    # In whole milliseconds, as stored: an ETA of this very moment has not passed yet.
    if when is None or round(when.timestamp() * 1000) >= math.floor(now * 1000):
        return job
    return {**job, "etaOverdue": True}
