"""``ConsoleExporter``: job events as readable lines (or JSON lines) on stderr."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, TextIO

from seenn._core.eta import smooth_completion
from seenn._core.eta_live import Run, describe, prior
from seenn._core.pipeline import ExportResult

if TYPE_CHECKING:
    from seenn._core.events import JobEvent

__all__ = ["ConsoleExporter"]

_BAR_WIDTH = 24
_CLEAR_LINE = "\r\x1b[2K"
_MIN_SHOWN = 5.0
"""Seconds a job must be expected to take for its progress lines to say how long is left."""
_MAX_FOLLOWED = 10_000
"""Jobs whose pace the console follows at once (a job that never ends here is forgotten)."""


class ConsoleExporter:
    """Writes job events to a stream, stderr by default.

    In text format each event is a line such as::

        [seenn] video-generation job_01J9... 40% render (2/4) Rendering frames, ~1 min 20 s left

    with child jobs indented under their parent. On a terminal (``live``),
    progress redraws one line with a bar instead of printing a line per
    update. ``format="json"`` writes one JSON object per event
    (:meth:`JobEvent.to_dict`), for log collectors.

    The time left is estimated here, from the events' timestamps and progress,
    with the estimator of ``TrackedJob.eta`` and the history the HTTP exporter
    fetched for the job type, if any. It shows once there is something to go on
    and the job is expected to take at least a few seconds; past what history
    (or the job's own pace) expected, the line says "taking longer than usual".
    A countdown that would go back up moves up gently.

    Only ASCII is written in text format, so any stream encoding works.

    While a live bar is on a terminal that is also ``sys.stdout``'s, what the
    program prints goes above the bar instead of onto its line: the console
    puts a thin wrapper on ``sys.stdout`` for as long as the bar is shown.

    Args:
        stream: Where to write; ``None`` means ``sys.stderr`` as it is at each
            export (so output capture in tests works).
        format: ``"text"`` or ``"json"``.
        live: Redraw progress in place; ``None`` means "if the stream is a TTY".
            Ignored for JSON.
    """

    def __init__(self, stream: TextIO | None = None, *,
                 format: Literal["text", "json"] = "text", live: bool | None = None) -> None:
        if format not in ("text", "json"):
            raise ValueError(f"format must be 'text' or 'json', not {format!r}")
        self._stream = stream
        self._format = format
        self._live = live
        # Reentrant: a print() the stdout guard sees may come from inside a write here.
        self._lock = threading.RLock()
        _consoles.add(self)
        self._depth: dict[str, int] = {}
        self._started_at: dict[str, float] = {}
        self._runs: dict[str, Run] = {}  # running jobs' pace
        self._shown: dict[str, float] = {}  # the completion time each job's line showed
        self._bar_shown = False
        self._bar_text = ""  # the bar as last drawn, to draw again below printed text
        self._bar_hidden = False  # cleared for printed text, to be drawn again
        self._guard: _StdoutGuard | None = None

    def _target(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr

    def export(self, events: Sequence[JobEvent]) -> ExportResult:
        """Write ``events``; a stream that fails to write makes it a ``FAILURE``."""
        stream = self._target()
        try:
            with self._lock:
                if self._format == "json":
                    text = "".join(json.dumps(event.to_dict(), default=str) + "\n"
                                   for event in events)
                else:
                    live = self._live
                    if live is None:
                        isatty = getattr(stream, "isatty", None)
                        live = bool(isatty()) if isatty is not None else False
                    text = _ascii("".join(self._render(event, live) for event in events))
                stream.write(text)
                stream.flush()
                if self._bar_shown:
                    self._guard_stdout(stream)
                elif not self._bar_hidden:
                    self._unguard_stdout()
        except (OSError, ValueError):
            return ExportResult.FAILURE
        return ExportResult.SUCCESS

    def _render(self, event: JobEvent, live: bool) -> str:
        job_id = event.job_id
        if event.kind == "started":
            depth = self._depth.get(event.parent_id, -1) + 1 if event.parent_id else 0
            self._depth[job_id] = depth
            self._started_at[job_id] = event.timestamp
        depth = self._depth.get(job_id, 0)
        head = f"[seenn] {'  ' * depth}{event.job_type} {job_id}"
        left = self._time_left(event)
        if event.kind == "progress":
            detail = self._describe_progress(event)
            if left:
                detail = f"{detail}, {left}"
            if live:
                self._bar_shown, self._bar_hidden = True, False
                filled = _BAR_WIDTH * event.progress // 100
                bar = "#" * filled + "-" * (_BAR_WIDTH - filled)
                self._bar_text = _ascii(f"{head} [{bar}] {detail}")
                return f"{_CLEAR_LINE}{head} [{bar}] {detail}"
            return f"{head} {detail}\n"
        prefix = ""
        self._bar_hidden = False
        if live and self._bar_shown:
            prefix = _CLEAR_LINE
            self._bar_shown = False
        if event.kind == "started":
            parts = ["started"]
            if event.title:
                parts.append(repr(event.title))
            if event.user_id:
                parts.append(f"for {event.user_id}")
            if event.parent_id:
                parts.append(f"(child {event.child_index} of {event.parent_id})")
            return f"{prefix}{head} {' '.join(parts)}\n"
        started = self._started_at.pop(job_id, None)
        self._depth.pop(job_id, None)
        took = f" in {event.timestamp - started:.2f}s" if started is not None else ""
        if event.kind == "completed":
            tail = ""
            result = event.result
            if result is not None and (result.type or result.url):
                tail = ": " + " ".join(part for part in (result.type, result.url) if part)
            return f"{prefix}{head} completed{took}{tail}\n"
        error = event.error
        reason = f": {error.code}: {error.message}" if error is not None else ""
        retry = " (retryable)" if event.retryable else ""
        return f"{prefix}{head} failed{took}{reason}{retry}\n"

    def _time_left(self, event: JobEvent) -> str:
        """Follow the job's pace through ``event``; how long is left, in words, or ``""``."""
        job_id = event.job_id
        if event.is_terminal:
            self._runs.pop(job_id, None)
            self._shown.pop(job_id, None)
            return ""
        if event.status != "running":
            return ""  # waiting in a queue (or not started): no countdown
        now = event.timestamp
        run = self._runs.get(job_id)
        if run is None:
            if len(self._runs) >= _MAX_FOLLOWED:
                forgotten = next(iter(self._runs))
                del self._runs[forgotten]
                self._shown.pop(forgotten, None)
            run = self._runs[job_id] = Run(now, event.progress)
        elif event.progress != run.progress:
            run.advance(event.progress, now)
        if event.kind != "progress":
            return ""  # only progress lines show it
        found = run.estimate(now, prior(event.job_type))
        if found is None or now - run.began + found.remaining < _MIN_SHOWN:
            return ""
        if found.overdue:
            self._shown.pop(job_id, None)
            return describe(found.remaining, overdue=True)
        shown = smooth_completion(self._shown.get(job_id), now + found.remaining, now)
        self._shown[job_id] = shown
        return describe(shown - now)

    @staticmethod
    def _describe_progress(event: JobEvent) -> str:
        parts = [f"{event.progress:3d}%"]
        stage = event.stage
        if stage is not None:
            parts.append(f"{stage.name} ({stage.current}/{stage.total})")
        if event.queue is not None and event.status == "queued":
            queue = event.queue
            total = f"/{queue.total}" if queue.total is not None else ""
            parts.append(f"queued {queue.position}{total}")
        if event.message:
            parts.append(event.message)
        return " ".join(parts)

    def force_flush(self, timeout: float = 30.0) -> bool:
        """Flush the stream."""
        try:
            self._target().flush()
        except (OSError, ValueError):
            return False
        return True

    def shutdown(self, timeout: float = 30.0) -> None:
        """End a live progress line, if one is shown."""
        with self._lock:
            self._bar_hidden = False
            if self._bar_shown:
                self._bar_shown = False
                with contextlib.suppress(OSError, ValueError):
                    self._target().write("\n")
            self._unguard_stdout()

    # -- the program's own output while a bar is shown -----------------------------------

    def _guard_stdout(self, stream: TextIO) -> None:
        """Wrap ``sys.stdout`` if it shares the bar's terminal (the caller holds the lock)."""
        stdout = sys.stdout
        if self._guard is not None or isinstance(stdout, _StdoutGuard) or stdout is stream:
            return
        if not (_isatty(stdout) and _isatty(stream)):
            return
        self._guard = _StdoutGuard(stdout, self)
        sys.stdout = self._guard

    def _unguard_stdout(self) -> None:
        guard, self._guard = self._guard, None
        if guard is not None and sys.stdout is guard:  # not if someone replaced it since
            sys.stdout = guard.wrapped

    def _write_around_bar(self, inner: TextIO, text: str) -> int:
        """Write the program's ``text`` above the bar: clear it, write, draw it again."""
        with self._lock:
            stream = self._target()
            if self._bar_shown and text:
                with contextlib.suppress(OSError, ValueError):
                    stream.write(_CLEAR_LINE)
                    stream.flush()
                self._bar_shown, self._bar_hidden = False, True
            written = inner.write(text)
            if self._bar_hidden and text.endswith("\n"):
                with contextlib.suppress(OSError, ValueError):
                    inner.flush()
                    stream.write(self._bar_text)
                    stream.flush()
                    self._bar_shown, self._bar_hidden = True, False
            return written


class _StdoutGuard:
    """``sys.stdout`` while a live bar is shown: text goes above the bar, not onto its line.

    The bar sits on the terminal's last line without a newline, so a ``print()``
    would continue that line. As rich's ``Live`` does, the console wraps
    ``sys.stdout`` while it draws a bar; everything but ``write`` goes to the
    wrapped stream unchanged.
    """

    def __init__(self, wrapped: TextIO, console: ConsoleExporter) -> None:
        self.wrapped = wrapped
        self._console = console

    def write(self, text: str) -> int:
        return self._console._write_around_bar(self.wrapped, text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)


def _isatty(stream: object) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if isatty is not None else False
    except (OSError, ValueError):
        return False


_consoles: weakref.WeakSet[ConsoleExporter] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # The parent's worker may have been writing (holding the lock) at the fork.
    for console in list(_consoles):
        console._lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _ascii(text: str) -> str:
    return text.encode("ascii", "backslashreplace").decode("ascii")
