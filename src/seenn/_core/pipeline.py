"""The extension points between jobs and the outside world, and internal-error policy.

``Processor`` receives each :class:`~seenn.JobEvent` inline, on the thread that
changed the job, so it must be cheap; ``Exporter`` does the delivery (usually
behind a :class:`~seenn.exporters.BatchProcessor`, on its worker thread).
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from seenn._core.events import JobEvent

__all__ = [
    "ExportResult",
    "Exporter",
    "Processor",
    "RateLimitedLog",
    "internal_error",
    "is_strict",
    "logger",
    "set_strict",
]

logger = logging.getLogger("seenn")


class RateLimitedLog:
    """Logs at most one line per ``interval`` seconds for each kind of trouble.

    A backend that is down, a full queue or a broken outbox produces the same
    problem for every job: one line says it, the next one (an interval later)
    says how many more there were. Thread-safe; what it holds back costs a
    clock read and a counter.

    Args:
        interval: The least time between two lines of one kind, in seconds.
        clock: A monotonic clock (a seam for tests).
    """

    def __init__(self, interval: float = 60.0, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._next: dict[str, float] = {}  # kind -> when its next line may go out
        self._held: dict[str, int] = {}  # kind -> lines held back since its last line

    def log(self, level: int, kind: str, message: str, *args: object) -> bool:
        """Log ``message % args`` unless a line of ``kind`` went out within ``interval``.

        Returns:
            ``True`` if the line was logged, ``False`` if it was held back (and counted).
        """
        return self._log(level, kind, message, args)

    def warning(self, kind: str, message: str, *args: object) -> bool:
        """:meth:`log` at ``WARNING`` level."""
        return self._log(logging.WARNING, kind, message, args)

    def error(self, kind: str, message: str, *args: object) -> bool:
        """:meth:`log` at ``ERROR`` level."""
        return self._log(logging.ERROR, kind, message, args)

    def _log(self, level: int, kind: str, message: str, args: tuple[object, ...]) -> bool:
        now = self._clock()
        with self._lock:
            if now < self._next.get(kind, now):
                self._held[kind] = self._held.get(kind, 0) + 1
                return False
            self._next[kind] = now + self.interval
            held = self._held.pop(kind, 0)
        if held:
            message += " (%d more like this since the last such line)"
            args = (*args, held)
        # The record names the code that had the trouble, not this helper.
        logger.log(level, message, *args, stacklevel=3)
        return True


class ExportResult(enum.Enum):
    """What an exporter reports for one batch, as in OpenTelemetry."""

    SUCCESS = 0
    FAILURE = 1


@runtime_checkable
class Exporter(Protocol):
    """Delivers job events somewhere (a backend, a terminal, a list in a test).

    ``export`` may block (it runs on a processor's worker thread unless the
    exporter is inline); it should return :attr:`ExportResult.FAILURE` rather
    than raise, but a raising exporter is contained and counted anyway.
    An exporter that sets the class attribute ``inline = True`` is cheap and
    non-blocking, and ``seenn.configure(exporters=[...])`` runs it without a
    batch processor.
    """

    def export(self, events: Sequence[JobEvent]) -> ExportResult:
        """Deliver ``events`` (in order) and report the outcome."""
        ...

    def force_flush(self, timeout: float = 30.0) -> bool:
        """Deliver anything buffered within ``timeout`` seconds; ``True`` if all went."""
        ...

    def shutdown(self, timeout: float = 30.0) -> None:
        """Flush and release resources; later exports may be ignored."""
        ...


@runtime_checkable
class Processor(Protocol):
    """Receives every event of the jobs of a tracker, inline; must not block.

    A processor may also define ``on_hand_off(job_id: str) -> None``, called
    when the block of a job handed to another process (``TrackedJob.hand_off()``)
    is left: that job ends elsewhere, so no terminal event follows here.
    :class:`~seenn.exporters.SimpleProcessor` passes it on to its exporter.
    """

    def on_event(self, event: JobEvent) -> None:
        """Take ``event``; called on the thread that changed the job."""
        ...

    def force_flush(self, timeout: float = 30.0) -> bool:
        """Deliver what is pending within ``timeout`` seconds; ``True`` if all went."""
        ...

    def shutdown(self, timeout: float = 30.0) -> None:
        """Deliver what is pending within ``timeout`` seconds and stop."""
        ...


_strict = False


def is_strict() -> bool:
    """Whether internal errors are re-raised (``seenn.testing`` turns this on)."""
    return _strict


def set_strict(value: bool) -> bool:
    """Turn strict mode on or off and return the previous setting."""
    global _strict
    previous = _strict
    _strict = value
    return previous


def _describe(job_ids: Iterable[str]) -> str:
    ids = list(dict.fromkeys(job_ids))
    if len(ids) > 5:
        return ", ".join(ids[:5]) + f" and {len(ids) - 5} more"
    return ", ".join(ids) or "-"


def internal_error(what: str, exc: BaseException, job_ids: Iterable[str]) -> None:
    """Log an internal failure (an exporter or processor that raised) with the job ids.

    In strict mode the caller re-raises after this returns.
    """
    logger.error("seenn: %s failed for job %s: %r", what, _describe(job_ids), exc,
                 exc_info=(type(exc), exc, exc.__traceback__))
