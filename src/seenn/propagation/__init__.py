"""One job across processes: carry it with the work and finish it where the work is done.

A web request starts a job, a queue worker finishes it::

    # in the web process
    with seenn.track("video-generation", user_id=user.id) as job:
        queue.put({"prompt": prompt, "seenn": job.hand_off()})
    # the block is left, but the job goes on: no "completed" here

    # in the worker
    with seenn.propagation.resume(message["seenn"]) as job:
        job.set_progress(50)
        ...                     # leaving completes the job; an exception fails it

* :func:`inject` writes the ambient job into a dict of strings (a *carrier*);
  :func:`extract` reads it back as a :class:`JobContext`.
* :func:`resume` continues the job in another process: no second ``started``
  event; progress and the end come from there.
* :class:`SeennPropagator` is an OpenTelemetry ``TextMapPropagator``, so any
  OpenTelemetry-instrumented transport carries the job along with the trace.

The carrier format: one key, ``seenn-job`` (:data:`CARRIER_KEY`), whose value
is ``;``-separated ``name=value`` fields, each value percent-encoded (UTF-8;
everything but ASCII letters, digits and ``-._~`` is escaped), e.g.::

    v=1;id=job_01JD5V0M8Q4N6T3C2X7B9K1H0E;type=video-generation;user=user_123;
    title=Generating%20video;stages=download,render,upload;stage=2,3,render;progress=33

Fields: ``v`` (format version, ``1``), ``id`` and ``type`` (required),
``user``, ``title``, ``parent`` and ``child`` (the parent job's id and this
job's index among its children), ``stages`` (the declared stage names, each
percent-encoded, joined by ``,``) or ``nstages`` (their number), ``stage``
(``current,total,name``), ``progress`` and ``children`` (how many child jobs
were started so far). Unknown fields are ignored; an API key is never written.
"""

from seenn._core.events import RESUMED_SEQUENCE_UNIT
from seenn.propagation._carrier import (
    CARRIER_KEY,
    JobContext,
    SeennPropagator,
    extract,
    inject,
    job_from_context,
)
from seenn.propagation._handover import DeferredJob, defer
from seenn.propagation._resume import ResumeScope, resume

__all__ = [
    "CARRIER_KEY",
    "DeferredJob",
    "JobContext",
    "RESUMED_SEQUENCE_UNIT",
    "ResumeScope",
    "SeennPropagator",
    "defer",
    "extract",
    "inject",
    "job_from_context",
    "resume",
]
