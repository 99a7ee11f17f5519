"""``SimpleProcessor``: each event handed to its exporter at once, on the calling thread."""

from __future__ import annotations

from typing import TYPE_CHECKING

from seenn._core.pipeline import ExportResult, internal_error, is_strict, logger

if TYPE_CHECKING:
    from seenn._core.events import JobEvent
    from seenn._core.pipeline import Exporter

__all__ = ["SimpleProcessor", "call_exporter"]


class SimpleProcessor:
    """Hands each event to its exporter at once, on the calling thread.

    Meant for tests (with :class:`seenn.testing.InMemoryExporter`) and for
    exporters that are cheap and never block. An exporter that raises is
    logged with the job id and counted (re-raised in strict mode); one that
    blocks blocks the tracked code, so put those behind a ``BatchProcessor``.

    Args:
        exporter: Where the events go.
    """

    def __init__(self, exporter: Exporter) -> None:
        self._exporter = exporter
        self._shutdown = False
        self.exported = 0
        """Events the exporter accepted."""
        self.failed = 0
        """Events the exporter refused or raised on."""

    @property
    def exporter(self) -> Exporter:
        """The exporter events are handed to."""
        return self._exporter

    def on_event(self, event: JobEvent) -> None:
        """Export ``event`` now."""
        if self._shutdown:
            return
        try:
            result = self._exporter.export((event,))
        except Exception as exc:
            self.failed += 1
            internal_error(f"exporter {type(self._exporter).__name__}", exc, (event.job_id,))
            if is_strict():
                raise
            return
        if result is ExportResult.FAILURE:
            self.failed += 1
            logger.warning("seenn: exporter %s could not export %s event of job %s",
                           type(self._exporter).__name__, event.kind, event.job_id)
        else:
            self.exported += 1

    def on_hand_off(self, job_id: str) -> None:
        """Pass on that a job goes on in another process, if the exporter wants to know.

        Called when the block of a job that was handed off
        (``TrackedJob.hand_off()``) is left: no terminal event will follow here.
        """
        hook = getattr(self._exporter, "on_hand_off", None)
        if hook is not None and not self._shutdown:
            hook(job_id)

    def force_flush(self, timeout: float = 30.0) -> bool:
        """Ask the exporter to flush what it buffers."""
        return call_exporter(self._exporter, "force_flush", timeout)

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop taking events and shut the exporter down."""
        if self._shutdown:
            return
        self._shutdown = True
        call_exporter(self._exporter, "shutdown", timeout)


def call_exporter(exporter: Exporter, method: str, timeout: float) -> bool:
    """Call the exporter's ``force_flush`` or ``shutdown``; log (not raise) what it raises."""
    try:
        if method == "force_flush":
            return bool(exporter.force_flush(max(timeout, 0.0)))
        exporter.shutdown(max(timeout, 0.0))
        return True
    except Exception as exc:
        internal_error(f"{type(exporter).__name__}.{method}()", exc, ())
        if is_strict():
            raise
        return False
