"""``OTelExporter``: job events as OpenTelemetry span events, and optionally a span per job.

It runs inline (``inline = True``): it has to see the span that is current
when the job changes, on the thread that changes it. With only the
OpenTelemetry API installed (no SDK) spans do not record, and every event
costs a couple of attribute checks.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from seenn._core.events import RESUMED_SEQUENCE_UNIT
from seenn._core.pipeline import ExportResult, internal_error, is_strict
from seenn._version import __version__

if TYPE_CHECKING:
    from opentelemetry.trace import Span, TracerProvider
    from opentelemetry.util.types import AttributeValue

    from seenn._core.events import JobEvent
    from seenn._core.models import Stage

__all__ = ["OTelExporter"]

_get_current_span = trace.get_current_span
_INVALID = trace.INVALID_SPAN
_TERMINAL_STATUS = {"CANCELLED": "CANCELLED", "INTERRUPTED": "INTERRUPTED"}
_MAX_DESCRIPTION = 1000


class _JobState:
    """What the exporter remembers of a job between its events."""

    __slots__ = ("budget_span", "held", "held_name", "job_span", "last_time", "outer_span_id",
                 "recorded", "stage")

    def __init__(self, job_span: Span | None, outer_span_id: int) -> None:
        self.job_span = job_span  # the job's own span (span_per_job), else None
        self.outer_span_id = outer_span_id  # the span current when the job's span opened
        self.budget_span: Span | None = None  # the span the progress budget counts for
        self.recorded = 0  # progress and stage events recorded on budget_span
        self.last_time = float("-inf")  # when the last progress event was recorded
        self.held: JobEvent | None = None  # the newest progress event not recorded (yet)
        self.held_name = ""
        self.stage: Stage | None = None  # the stage of the last event seen


def _ns(timestamp: float) -> int:
    return int(timestamp * 1e9)


class OTelExporter:
    """Records job changes on OpenTelemetry spans.

    By default each change becomes an event on the span that is current when
    the job changes: ``seenn.job.started``, ``seenn.job.progress``,
    ``seenn.job.stage`` (the job entered another stage), ``seenn.job.resumed``
    (the job was resumed here from another process), ``seenn.job.completed``,
    ``seenn.job.failed`` and ``seenn.job.handed_off``, with attributes
    ``seenn.job.id``, ``.type``, ``.status``, ``.progress``, ``.sequence``,
    ``.message``, ``.title``, ``.stage.name``/``.current``/``.total``,
    ``.queue.position``/``.total``, ``.parent_id``, ``.child_index``,
    ``.error.code``/``.message``, ``.retryable``, ``.result.type`` (and
    ``seenn.job.user_id`` with ``record_user_id=True``). Nothing is recorded
    while no span is recording.

    With ``span_per_job=True`` each job gets a span of its own, ``seenn.job
    <job_type>`` (a child of the span current when the job starts, or of its
    parent job's span), which carries the events and ends with the job: on
    failure with status ERROR and the exception's ``exception.type``,
    ``exception.message`` and ``exception.stacktrace`` recorded; a cancelled
    or interrupted job gets status ERROR with the description ``CANCELLED`` or
    ``INTERRUPTED``. The job's span is not made the current span (that would
    hold a context token across ``yield``s in generators); to parent your own
    spans under it, use :meth:`job_span` with ``trace.use_span``.

    Progress events are rate-limited per job and span: at most one per
    ``progress_interval`` seconds and ``max_progress_events`` in all (stage
    events count too), the first and the last always kept, so that a long job
    does not fill the SDK's 128-event limit of a span. A held-back event is
    recorded with its own timestamp when the job next records something.

    Args:
        tracer_provider: The provider of the job spans; the global one if not given.
        span_per_job: Give each job a span of its own.
        record_user_id: Record the job's user id (personal data: off by default).
        progress_interval: The least time between two progress events of a job
            recorded on one span.
        max_progress_events: The most progress and stage events of a job recorded
            on one span (the last one, recorded when the job ends, comes on top).
    """

    inline = True

    def __init__(
        self,
        *,
        tracer_provider: TracerProvider | None = None,
        span_per_job: bool = False,
        record_user_id: bool = False,
        progress_interval: float = 1.0,
        max_progress_events: int = 50,
    ) -> None:
        from seenn._core.validation import fail

        if progress_interval < 0:
            fail("progress_interval", "must not be negative")
        if max_progress_events < 1:
            fail("max_progress_events", "must be at least 1")
        self.span_per_job = span_per_job
        self.record_user_id = record_user_id
        self.progress_interval = progress_interval
        self.max_progress_events = max_progress_events
        self._tracer = trace.get_tracer("seenn", __version__, tracer_provider=tracer_provider)
        self._jobs: dict[str, _JobState] = {}
        self._lock = threading.Lock()
        self._shutdown = False
        self._clock: Callable[[], float] = time.monotonic  # a seam for tests

    # -- the exporter protocol -----------------------------------------------------------

    def export(self, events: Sequence[JobEvent]) -> ExportResult:
        """Record ``events`` on the current span (or their jobs' spans); never raises."""
        if self._shutdown:
            return ExportResult.FAILURE
        for event in events:
            try:
                self._record(event)
            except Exception as exc:
                internal_error("OTelExporter", exc, (event.job_id,))
                if is_strict():
                    raise
        return ExportResult.SUCCESS

    def force_flush(self, timeout: float = 30.0) -> bool:
        """Nothing is buffered here (the span processors buffer): returns ``True``."""
        return True

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop recording; the spans of jobs still running are ended as they are."""
        self._shutdown = True
        with self._lock:
            states = list(self._jobs.values())
            self._jobs.clear()
        for state in states:
            if state.job_span is not None:
                self._flush_held(state)
                state.job_span.end()

    def on_hand_off(self, job_id: str) -> None:
        """Record that the job goes on in another process and forget it here.

        Called (through ``SimpleProcessor``) when the block of a handed-off job
        is left: a ``seenn.job.handed_off`` event, and the job's span ends.

        Args:
            job_id: The job handed off.
        """
        state = self._jobs.pop(job_id, None)
        if state is None:
            return
        self._flush_held(state)
        span = state.job_span
        if span is None:
            span = _get_current_span()
        if span.is_recording():
            span.add_event("seenn.job.handed_off", {"seenn.job.id": job_id})
            if state.job_span is not None:
                span.end()

    def job_span(self, job_id: str) -> Span | None:
        """Return the span of a running job (with ``span_per_job=True``), to parent spans under.

        The job's span is never made current by seenn; do it yourself where no
        ``yield`` intervenes::

            with trace.use_span(exporter.job_span(job.id) or trace.INVALID_SPAN):
                ...   # spans started here are children of the job's span

        Args:
            job_id: The job's id (``job.id``).

        Returns:
            The span, or ``None`` if the job has no recording span here (not
            sampled, no SDK, ``span_per_job`` off, or the job has ended).
        """
        state = self._jobs.get(job_id)
        return state.job_span if state is not None else None

    # -- recording ----------------------------------------------------------------------

    def _record(self, event: JobEvent) -> None:
        job_id = event.job_id
        kind = event.kind
        state = self._jobs.get(job_id)
        new = state is None
        if self.span_per_job:
            if state is None:
                state = self._open(event)
            span = state.job_span
            if span is None:  # not sampled, or no SDK
                if kind == "completed" or kind == "failed":
                    self._jobs.pop(job_id, None)
                return
        elif state is None:
            if event.span_id is None:
                return  # no span (always so without an SDK): nothing to record or remember
            span = _get_current_span()
            if not span.is_recording():
                return
            state = self._jobs[job_id] = _JobState(None, 0)
        else:
            span = _get_current_span()
        if span is not state.budget_span:
            # Another span (the job moved on to other work): a budget of its own.
            self._flush_held(state)
            state.budget_span = span
            state.recorded = 0
        if kind == "progress":
            self._progress(state, span, event, new)
        elif kind == "started":
            state.stage = event.stage
            if span.is_recording():
                span.add_event("seenn.job.started", self._attributes(event),
                               _ns(event.timestamp))
        else:
            self._flush_held(state)
            self._jobs.pop(job_id, None)
            if span.is_recording():
                span.add_event(f"seenn.job.{kind}", self._attributes(event),
                               _ns(event.timestamp))
                if state.job_span is not None:
                    self._end_job_span(state.job_span, event)

    def _progress(self, state: _JobState, span: Span, event: JobEvent, new: bool) -> None:
        sequence = event.sequence
        if new and sequence and sequence % RESUMED_SEQUENCE_UNIT == 0:
            name = "seenn.job.resumed"
        elif event.stage is not None and event.stage != state.stage:
            name = "seenn.job.stage"
        else:
            name = "seenn.job.progress"
        state.stage = event.stage
        now = self._clock()
        if state.recorded and name != "seenn.job.resumed" and (
                state.recorded >= self.max_progress_events
                or (name == "seenn.job.progress"
                    and now - state.last_time < self.progress_interval)):
            # Held back: recorded later if nothing newer is recorded first.
            state.held = event
            if state.held_name != "seenn.job.stage":
                state.held_name = name  # a held stage change still shows as one
            return
        state.held = None
        state.held_name = ""
        state.last_time = now
        state.recorded += 1
        if span.is_recording():
            span.add_event(name, self._attributes(event), _ns(event.timestamp))

    def _flush_held(self, state: _JobState) -> None:
        held = state.held
        if held is None:
            return
        state.held = None
        span = state.job_span if state.job_span is not None else state.budget_span
        if span is not None and span.is_recording():
            span.add_event(state.held_name or "seenn.job.progress", self._attributes(held),
                           _ns(held.timestamp))
        state.held_name = ""

    def _open(self, event: JobEvent) -> _JobState:
        """Start the span of a job seen for the first time (``span_per_job``)."""
        current = _get_current_span()
        parent_span = current
        current_id = current.get_span_context().span_id
        if event.parent_id is not None:
            parent = self._jobs.get(event.parent_id)
            # Inside its parent job and no span of the user's in between: the
            # child's span goes under the parent job's span.
            if parent is not None and parent.job_span is not None and \
                    parent.outer_span_id == current_id:
                parent_span = parent.job_span
        context = trace.set_span_in_context(parent_span) if parent_span is not _INVALID else None
        attributes: dict[str, AttributeValue] = {"seenn.job.id": event.job_id,
                                                 "seenn.job.type": event.job_type}
        if event.parent_id is not None:
            attributes["seenn.job.parent_id"] = event.parent_id
        if event.child_index is not None:
            attributes["seenn.job.child_index"] = event.child_index
        if self.record_user_id and event.user_id is not None:
            attributes["seenn.job.user_id"] = event.user_id
        if event.kind != "started":
            attributes["seenn.job.resumed"] = True
        span = self._tracer.start_span(f"seenn.job {event.job_type}", context=context,
                                       kind=SpanKind.INTERNAL, attributes=attributes,
                                       start_time=_ns(event.timestamp))
        state = _JobState(span if span.is_recording() else None, current_id)
        with self._lock:
            if not self._shutdown:
                self._jobs[event.job_id] = state
        return state

    def _end_job_span(self, span: Span, event: JobEvent) -> None:
        span.set_attribute("seenn.job.status", event.status)
        span.set_attribute("seenn.job.progress", event.progress)
        error = event.error
        if event.kind == "failed" and error is not None:
            span.set_attribute("seenn.job.error.code", error.code)
            details = error.details or {}
            exc_type = details.get("type")
            if isinstance(exc_type, str):
                exception: dict[str, AttributeValue] = {"exception.type": exc_type,
                                                        "exception.message": error.message}
                stack = details.get("traceback")
                if isinstance(stack, str) and stack:
                    exception["exception.stacktrace"] = stack
                span.add_event("exception", exception, _ns(event.timestamp))
            description = _TERMINAL_STATUS.get(error.code)
            if description is None:
                description = f"{error.code}: {error.message}"[:_MAX_DESCRIPTION]
            span.set_status(Status(StatusCode.ERROR, description))
        elif event.kind == "failed":
            span.set_status(Status(StatusCode.ERROR, "FAILED"))
        span.end(end_time=_ns(event.timestamp))

    def _attributes(self, event: JobEvent) -> dict[str, AttributeValue]:
        attributes: dict[str, AttributeValue] = {
            "seenn.job.id": event.job_id,
            "seenn.job.type": event.job_type,
            "seenn.job.status": event.status,
            "seenn.job.progress": event.progress,
            "seenn.job.sequence": event.sequence,
        }
        if event.message is not None:
            attributes["seenn.job.message"] = event.message
        stage = event.stage
        if stage is not None:
            attributes["seenn.job.stage.name"] = stage.name
            attributes["seenn.job.stage.current"] = stage.current
            attributes["seenn.job.stage.total"] = stage.total
        queue = event.queue
        if queue is not None:
            attributes["seenn.job.queue.position"] = queue.position
            if queue.total is not None:
                attributes["seenn.job.queue.total"] = queue.total
        if event.parent_id is not None:
            attributes["seenn.job.parent_id"] = event.parent_id
            if event.child_index is not None:
                attributes["seenn.job.child_index"] = event.child_index
        if self.record_user_id and event.user_id is not None:
            attributes["seenn.job.user_id"] = event.user_id
        kind = event.kind
        if kind == "started":
            if event.title is not None:
                attributes["seenn.job.title"] = event.title
        elif kind == "failed":
            if event.error is not None:
                attributes["seenn.job.error.code"] = event.error.code
                attributes["seenn.job.error.message"] = event.error.message
            if event.retryable is not None:
                attributes["seenn.job.retryable"] = event.retryable
        elif kind == "completed" and event.result is not None and \
                event.result.type is not None:
            attributes["seenn.job.result.type"] = event.result.type
        return attributes
