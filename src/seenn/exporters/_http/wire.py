"""The wire mapping: which REST call (path, body, idempotency key) carries a ``JobEvent``.

Pure functions over an event and what the exporter knows of its job (the id the
backend gave it, its parent's); no I/O and no exporter state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from seenn._core.models import JobError

if TYPE_CHECKING:
    from seenn._core.events import JobEvent

__all__ = ["ANONYMOUS_USER", "assigned_id", "batch_entry", "events_limits", "idempotency_key",
           "request"]

ANONYMOUS_USER = "anonymous"
_PRIVATE_DETAILS = ("traceback", "chain")


def idempotency_key(event: JobEvent, suffix: str = "") -> str:
    """``<job id>.<sequence>[suffix]``: the same on every retry and after a replay."""
    return f"{event.job_id}.{event.sequence}{suffix}"


def request(event: JobEvent, *, server_id: str | None, parent_ref: str | None,
            include_traceback: bool, include_trace_context: bool,
            stale_after: int | None = None) -> tuple[str, dict[str, Any]]:
    """The path and JSON body of the ``POST`` that delivers ``event``.

    Args:
        event: The event to send.
        server_id: The id the backend gave the job, if not the in-process one.
        parent_ref: For a start, the parent to name in ``parentJobId`` (the
            backend's id for it when known); ``None`` to start the job on its own.
        include_traceback: Keep the traceback and exception chain of a failure.
        include_trace_context: Put the start's ``traceId``/``spanId`` in its metadata.
        stale_after: For a start or progress call, the job's stale limit in seconds
            (``staleAfterSeconds``); ``None`` leaves the field out.
    """
    from seenn._client.transport import quote_id

    if event.kind == "started":
        body: dict[str, Any] = {"id": event.job_id, "jobType": event.job_type,
                                "userId": event.user_id or ANONYMOUS_USER,
                                "title": event.title or event.job_type}
        metadata = dict(event.metadata) if event.metadata else {}
        if include_trace_context and event.trace_id is not None:
            metadata.setdefault("traceId", event.trace_id)
            metadata.setdefault("spanId", event.span_id)
        if metadata:
            body["metadata"] = metadata
        if event.queue is not None:
            body["queue"] = event.queue.to_wire()
        if event.stage is not None:
            body["stage"] = event.stage.to_wire()
        if parent_ref is not None:
            body["parentJobId"] = parent_ref
            if event.child_index is not None:
                body["childIndex"] = event.child_index
        if stale_after is not None:
            body["staleAfterSeconds"] = stale_after
        return "/jobs", body
    target = "/jobs/" + quote_id(server_id or event.job_id)
    if event.kind == "progress":
        body = {"progress": event.progress}
        if event.message is not None:
            body["message"] = event.message
        if event.stage is not None:
            body["stage"] = event.stage.to_wire()
        if event.queue is not None:
            body["queue"] = event.queue.to_wire()
        if event.metadata:
            body["metadata"] = dict(event.metadata)
        if stale_after is not None:
            body["staleAfterSeconds"] = stale_after
        return target + "/progress", body
    if event.kind == "completed":
        body = {}
        if event.result is not None:
            body["result"] = event.result.to_wire()
        if event.message is not None:
            body["message"] = event.message
        return target + "/complete", body
    error = event.error or JobError("FAILED", "the job failed")
    wire = error.to_wire()
    if error.details and not include_traceback:
        details = {k: v for k, v in error.details.items() if k not in _PRIVATE_DETAILS}
        if details:
            wire["details"] = details
        else:
            wire.pop("details", None)
    body = {"error": wire}
    if event.retryable is not None:
        body["retryable"] = event.retryable
    return target + "/fail", body


_BATCH_TYPES = {"started": "start", "progress": "progress", "completed": "complete",
                "failed": "fail"}


def batch_entry(event: JobEvent, body: dict[str, Any], key: str,
                server_id: str | None) -> dict[str, Any]:
    """The entry of ``POST /v1/events`` that stands for the single call of ``event``.

    ``body`` and ``key`` are the single call's (from :func:`request` and
    :func:`idempotency_key`), so the backend answers and stores it as that call.
    """
    entry: dict[str, Any] = {"type": _BATCH_TYPES[event.kind], "idempotencyKey": key,
                             "body": body}
    if event.kind != "started":
        entry["jobId"] = server_id or event.job_id
    return entry


def events_limits(answer: Any) -> tuple[int, int] | None:
    """``(maxEvents, maxBytes)`` of the ``events`` extension a ``/healthz`` answer offers."""
    extensions = answer.get("extensions") if isinstance(answer, Mapping) else None
    offer = extensions.get("events") if isinstance(extensions, Mapping) else None
    if not isinstance(offer, Mapping):
        return None
    most, size = offer.get("maxEvents"), offer.get("maxBytes")
    if type(most) is not int or most < 2:
        return None
    return most, size if type(size) is int and size > 0 else 0


def assigned_id(answer: Any, job_id: str) -> str | None:
    """The id the backend gave a started job, from its answer; ``None`` if it kept ``job_id``."""
    server_id = answer.get("id") if isinstance(answer, Mapping) else None
    if isinstance(server_id, str) and server_id != job_id:
        return server_id
    return None
