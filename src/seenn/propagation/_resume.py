"""Continuing a job in another process: ``resume()``, and the carrier ``hand_off()`` returns."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from seenn._core.events import RESUMED_SEQUENCE_UNIT
from seenn._core.pipeline import logger
from seenn._instrumentation.job import TrackedJob, new_job, plain_job, set_hand_off_codec
from seenn._instrumentation.lifecycle import ProcessorSource
from seenn._instrumentation.outcomes import RetryRule
from seenn._instrumentation.tracker import Tracker, default_tracker
from seenn.propagation._carrier import CARRIER_KEY, JobContext, encode_job, extract

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["ResumeScope", "resume", "resumed_job", "resumed_sequence"]


def resume(carrier: Mapping[str, Any] | JobContext | None, /, *,
           retryable: RetryRule = None, tracker: Tracker | None = None) -> ResumeScope:
    """Continue, in this process, a job another process handed over.

    Use it as ``with resume(carrier) as job:`` or ``async with``. Entering
    makes the job ambient again, as in ``track()``, but reports no second
    ``started``: one ``progress`` event says the job runs here now (status
    ``running``). Leaving completes the job; an exception fails it (and is
    re-raised), as the outcome table of ``track()`` says. The job keeps its
    id, type, user, title, parent, stages, stage and progress; its metadata
    stays with the backend (pass new metadata with ``set_progress``).

    A carrier that holds no job resumes nothing: the block runs with ``None``
    as its job, and a warning on the ``seenn`` logger says so. Use
    :func:`extract` first to decide for yourself.

    Args:
        carrier: What :meth:`TrackedJob.hand_off` or :func:`inject` wrote (a
            dict of strings), or a :class:`JobContext` (from :func:`extract` or
            :func:`job_from_context`), or ``None``.
        retryable: Whether a failure here may be retried, as for ``track()``.
        tracker: The tracker whose processors get the events; the default one
            (behind ``seenn.track``) if not given.

    Raises:
        ValidationError: The carrier holds a malformed job.
    """
    context = (carrier if carrier is None or isinstance(carrier, JobContext)
               else extract(carrier))
    if tracker is None:
        tracker = default_tracker()
    if context is None:
        logger.warning("seenn: resume(): the carrier holds no job (no %r key); the block "
                       "runs without one", CARRIER_KEY)
        return ResumeScope(None, tracker, None)
    return ResumeScope(resumed_job(context, tracker, retryable), tracker, context)


def resumed_job(context: JobContext, tracker: ProcessorSource,
                retryable: RetryRule = None) -> TrackedJob:
    """The job a carrier describes, not started yet: what ``resume()`` enters.

    Raises:
        ValidationError: ``retryable`` is malformed.
    """
    job = new_job(tracker, context.job_type, context.user_id, context.title, None, None,
                  context.stage, context.stages, context.job_id, retryable)
    job._progress = context.progress
    if context.parent_id is not None:
        parent = plain_job(tracker, "remote-parent", None)
        parent._id = context.parent_id
        job._parent = parent
        job._child_index = context.child_index
    if context.children:
        job._children = context.children
    return job


def resumed_sequence() -> int:
    """Where the events of a job resumed here are numbered from (see ``RESUMED_SEQUENCE_UNIT``)."""
    # A random multiple of RESUMED_SEQUENCE_UNIT, 1 to 2**31 - 1 times it: never the
    # starting process's range, and a collision between two resumes of one carrier
    # has a chance of about one in two billion.
    factor = int.from_bytes(os.urandom(4), "big") & 0x7FFFFFFF
    return (factor or 1) * RESUMED_SEQUENCE_UNIT


class ResumeScope:
    """The ``with``/``async with`` block of :func:`resume`; it yields the job (or ``None``)."""

    __slots__ = ("_context", "_job", "_tracker")

    def __init__(self, job: TrackedJob | None, tracker: ProcessorSource,
                 context: JobContext | None) -> None:
        self._job = job
        self._tracker = tracker
        self._context = context

    @property
    def context(self) -> JobContext | None:
        """The job as the carrier described it, or ``None``."""
        return self._context

    def __enter__(self) -> TrackedJob | None:
        job = self._job
        if job is not None:
            job._enter_resumed(resumed_sequence())
        return job

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._job is not None:
            self._job.__exit__(exc_type, exc, tb)

    async def __aenter__(self) -> TrackedJob | None:
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.__exit__(exc_type, exc, tb)


def _job_span(job: TrackedJob) -> Any:
    """The job's own span, if an exporter of its pipeline made one (``span_per_job``)."""
    for processor in getattr(job, "_procs", ()):
        finder = getattr(getattr(processor, "exporter", None), "job_span", None)
        if finder is not None:
            span = finder(job.id)
            if span is not None:
                return span
    return None


def _carrier_for_hand_off(value: str, job: TrackedJob) -> dict[str, str]:
    """The carrier :meth:`TrackedJob.hand_off` returns: the trace context, then the job.

    The trace context is the job's own span when it has one (so the worker's
    spans go under it), else the current span's.
    """
    carrier: dict[str, str] = {}
    from opentelemetry import trace

    try:
        span = _job_span(job)
        context = trace.set_span_in_context(span) if span is not None else None
        if span is not None or trace.get_current_span().get_span_context().is_valid:
            from opentelemetry import propagate

            propagate.inject(carrier, context=context)
    except Exception as exc:  # a broken propagator must not break the hand-off
        logger.warning("seenn: hand_off(): the OpenTelemetry propagator failed: %r", exc)
    carrier[CARRIER_KEY] = value
    return carrier


# TrackedJob.hand_off() writes its carrier through this package, which sits above
# instrumentation: plug the format in now (``import seenn`` imports it).
set_hand_off_codec(encode_job, _carrier_for_hand_off)
