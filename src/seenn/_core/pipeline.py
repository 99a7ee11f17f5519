"""The extension points between jobs and the outside world, and internal-error policy.

``Processor`` receives each :class:`~seenn.JobEvent` inline, on the thread that
changed the job, so it must be cheap; ``Exporter`` does the delivery (usually
behind a :class:`~seenn.exporters.BatchProcessor`, on its worker thread).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from seenn._core.events import JobEvent

__all__ = [
    "ExportResult",
    "Exporter",
    "Processor",
    "internal_error",
    "is_strict",
    "logger",
    "set_strict",
]

logger = logging.getLogger("seenn")


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
