"""``JobEvent``: the one thing exporters see of a job."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Literal

from opentelemetry import trace as _otel_trace
from opentelemetry.trace import Span

from seenn._core.accel import speedups
from seenn._core.models import JobError, JobResult, JobStatus, Queue, Stage

__all__ = [
    "EventBuilder",
    "EventKind",
    "JobEvent",
    "RESUMED_SEQUENCE_UNIT",
    "SPAN_KEY",
    "Span",
    "current_context",
    "make_event",
]

EventKind = Literal["started", "progress", "completed", "failed"]

RESUMED_SEQUENCE_UNIT = 1 << 32
"""Sequence numbers of a job resumed in another process start at a multiple of this.

The process that starts a job numbers its events from 0; a process that
resumes it (``seenn.propagation.resume``) numbers them from ``k << 32``, with
``k`` drawn at random from 1 to 2**31 - 1 for each resume. The two ranges
never meet (a job would need 4 billion events), so an idempotency key
``<job id>.<sequence>`` never repeats across the processes, and every sequence
still fits a signed 64-bit integer. ``sequence >= RESUMED_SEQUENCE_UNIT`` tells
an exporter that the job was started elsewhere.
"""


# The field names of JobEvent, in order (checked against the dataclass below).
_FIELDS = ("kind", "job_id", "job_type", "user_id", "title", "status", "progress", "message",
           "stage", "queue", "metadata", "result", "error", "retryable", "parent_id",
           "child_index", "sequence", "timestamp", "trace_id", "span_id")


if TYPE_CHECKING or speedups is None:
    class _EventSlots:
        """The storage of an event: one slot per field, shared by JobEvent and EventBuilder.

        Both classes add no slots of their own, so giving a builder its real class
        (see ``EventBuilder``) finds the two layouts identical by their common base
        instead of comparing their twenty slot names. With the compiled hot path,
        the storage is ``seenn._core._speedups.EventSlots``: the same twenty
        fields, which compiled code fills directly.
        """

        __slots__ = _FIELDS
else:
    if speedups.EVENT_FIELDS != _FIELDS:  # pragma: no cover - a stale build
        raise ImportError("seenn._core._speedups is out of date: rebuild seenn")
    _EventSlots = speedups.EventSlots


@dataclass(frozen=True)
class JobEvent(_EventSlots):
    """A snapshot of a job taken when it changed, handed to processors and exporters.

    Every event carries the job's whole current state, so the latest event of a
    job is enough to show it; this is what lets processors drop superseded
    progress events.

    Attributes:
        kind: ``"started"``, ``"progress"``, ``"completed"`` or ``"failed"``.
        job_id: The job's id (``job_`` + ULID unless given to ``track()``).
        job_type: The kind of job, e.g. ``"video-generation"``.
        user_id: The user the job belongs to, if known.
        title: A human-readable title, if given.
        status: The job's status after the change.
        progress: Percent done, an int from 0 to 100.
        message: The latest progress message, if any.
        stage: The current stage, if any.
        queue: The job's place in a queue, if any.
        metadata: The latest metadata given, if any (do not mutate it).
        result: The job's result; only on ``"completed"`` events.
        error: Why the job failed; only on ``"failed"`` events.
        retryable: Whether a failed job may be retried; ``None`` unless failed.
        parent_id: The id of the job this one was started inside, if any.
        child_index: This job's 0-based index among its parent's children.
        sequence: The event's number within its job, from 0 (in a process that
            resumed the job, from a random multiple of ``RESUMED_SEQUENCE_UNIT``).
        timestamp: When the change happened, in seconds since the epoch.
        trace_id: The active OpenTelemetry trace id (32 lowercase hex digits), or ``None``.
        span_id: The active OpenTelemetry span id (16 lowercase hex digits), or ``None``.
    """

    __slots__ = ()

    kind: EventKind
    job_id: str
    job_type: str
    user_id: str | None
    title: str | None
    status: JobStatus
    progress: int
    message: str | None
    stage: Stage | None
    queue: Queue | None
    metadata: Mapping[str, Any] | None
    result: JobResult | None
    error: JobError | None
    retryable: bool | None
    parent_id: str | None
    child_index: int | None
    sequence: int
    timestamp: float
    trace_id: str | None
    span_id: str | None

    @property
    def is_terminal(self) -> bool:
        """Whether this event ends its job (``"completed"`` or ``"failed"``)."""
        return self.kind == "completed" or self.kind == "failed"

    def __getstate__(self) -> list[Any]:
        """The field values, in order: what pickling and copying keep."""
        return [getattr(self, name) for name in _FIELDS]

    def __setstate__(self, state: list[Any]) -> None:
        """Restore the field values (the event is frozen: through ``object.__setattr__``)."""
        for name, value in zip(_FIELDS, state, strict=True):
            object.__setattr__(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict; nested models use their wire (camelCase) form."""
        return {
            "kind": self.kind,
            "job_id": self.job_id,
            "job_type": self.job_type,
            "user_id": self.user_id,
            "title": self.title,
            "status": self.status,
            "progress": self.progress,
            "message": self.message,
            "stage": self.stage.to_wire() if self.stage is not None else None,
            "queue": self.queue.to_wire() if self.queue is not None else None,
            "metadata": dict(self.metadata) if self.metadata is not None else None,
            "result": self.result.to_wire() if self.result is not None else None,
            "error": self.error.to_wire() if self.error is not None else None,
            "retryable": self.retryable,
            "parent_id": self.parent_id,
            "child_index": self.child_index,
            "sequence": self.sequence,
            "timestamp": self.timestamp,
            "trace_id": self.trace_id,
            "span_id": self.span_id,
        }


if tuple(field.name for field in fields(JobEvent)) != _FIELDS:  # pragma: no cover
    raise AssertionError("_FIELDS must list JobEvent's fields in order")

EventBuilder = type("EventBuilder", (_EventSlots,), {"__slots__": (), "__module__": __name__})
"""A :class:`JobEvent` under construction: an unfrozen twin with the very same slots.

A frozen dataclass's ``__init__`` sets each field through
``object.__setattr__``, and calling a class with twenty arguments builds an
argument tuple and an ``__init__`` frame: together more than all the rest of a
state change. The job's state machine makes an empty builder, stores the
twenty fields (specialised slot stores: the builder has no ``__setattr__`` of
its own), then gives the object its real class, which the shared slots allow.
Measured: ~230 ns an event, against ~500 ns for a twenty-argument call and
~2 us for stores on a subclass of ``JobEvent``. (With the slots declared on
each class rather than on a common base, giving the class compared the two
lists of slot names: ~100 ns more.)
"""


def make_event(*values: Any) -> JobEvent:
    """Build a :class:`JobEvent` from its field values, in field order."""
    event: Any = EventBuilder()
    for name, value in zip(_FIELDS, values, strict=True):
        setattr(event, name, value)
    event.__class__ = JobEvent
    return event  # type: ignore[no-any-return]


def _context_reader() -> tuple[Callable[[], Mapping[str, object]], str]:
    # The API's get_current_span() costs four Python calls (get_current_span,
    # get_value, get_current, the runtime context's get_current) for what is one
    # ContextVar read and one dict lookup; an event is built three times per job.
    # With the default runtime context, read its ContextVar directly. Anything
    # unexpected (another runtime context, a renamed private) takes the public API.
    try:
        from opentelemetry.context import _RUNTIME_CONTEXT
        from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext
        from opentelemetry.trace.propagation import _SPAN_KEY
    except ImportError:  # pragma: no cover - depends on the opentelemetry-api release
        pass
    else:
        var = getattr(_RUNTIME_CONTEXT, "_current_context", None)
        if (type(_RUNTIME_CONTEXT) is ContextVarsRuntimeContext and isinstance(var, ContextVar)
                and isinstance(_SPAN_KEY, str)):
            return var.get, _SPAN_KEY

    def current_span_only() -> Mapping[str, object]:  # pragma: no cover - see above
        return {"span": _otel_trace.get_current_span()}

    return current_span_only, "span"


current_context, SPAN_KEY = _context_reader()
"""``current_context().get(SPAN_KEY)`` is the active OpenTelemetry span, or ``None``."""
