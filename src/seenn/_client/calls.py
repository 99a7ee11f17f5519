"""What each jobs call sends and accepts, shared by the sync and async clients.

Checked arguments in, wire dicts out: request bodies and query parameters
(every argument validated before any request), and the shape a 2xx answer
must have to be used.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from seenn._client.transport import check_api_key
from seenn._core.models import ChildProgressMode, JobError, JobResult, Queue, Stage, UserToken
from seenn._core.validation import (
    CHILD_PROGRESS_MODES,
    MAX_JOB_TYPE,
    MAX_LIST_LIMIT,
    MAX_MESSAGE,
    MAX_STALE_AFTER,
    MAX_TITLE,
    MAX_TOTAL_CHILDREN,
    MAX_TTL_SECONDS,
    MAX_USER_ID,
    MIN_STALE_AFTER,
    MIN_TTL_SECONDS,
    check_bool,
    check_choice,
    check_datetime,
    check_duration_ms,
    check_int,
    check_json,
    check_metadata,
    check_opt_text,
    check_progress,
    check_text,
    coerce_error,
    coerce_queue,
    coerce_result,
    coerce_stage,
    fail,
    parse_datetime,
)
from seenn.errors import ValidationError

__all__ = ["check_batch", "children_params", "complete_body", "fail_body", "family_shape",
           "job_shape", "list_params", "next_cursor", "page_shape", "parent_body",
           "progress_body", "start_body", "token_body", "token_shape", "user_token"]

_MAX_PUSH_BYTES = 4096


def _usable_id(value: object) -> bool:
    # A JSON "\ud800" escape decodes to a lone surrogate, which no URL path can carry.
    if not isinstance(value, str) or not value:
        return False
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def job_shape(data: object) -> str | None:
    """Check a decoded answer is a job object: ``None`` if so, else what was expected."""
    if isinstance(data, Mapping) and _usable_id(data.get("id")):
        return None
    return "a job object with an 'id'"


def _push(value: object, field: str) -> object:
    if isinstance(value, bool):
        return value
    if not isinstance(value, Mapping):
        fail(field, f"must be a bool or a mapping, not {type(value).__name__}")
    return check_json(field, dict(value), max_bytes=_MAX_PUSH_BYTES)


def start_body(
    *,
    job_type: str,
    user_id: str,
    title: str,
    job_id: str | None = None,
    workflow_id: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    queue: Queue | Mapping[str, Any] | None = None,
    stage: Stage | Mapping[str, Any] | None = None,
    estimated_completion_at: datetime | str | None = None,
    estimated_duration: float | timedelta | None = None,
    ttl_seconds: int | None = None,
    parent_job_id: str | None = None,
    child_index: int | None = None,
    total_children: int | None = None,
    child_progress_mode: str | None = None,
    stale_after: int | None = None,
) -> dict[str, Any]:
    """Validate the arguments of a job start and return the ``POST /jobs`` body."""
    body: dict[str, Any] = {
        "jobType": check_text("job_type", job_type, max_len=MAX_JOB_TYPE),
        "userId": check_text("user_id", user_id, max_len=MAX_USER_ID),
        "title": check_text("title", title, max_len=MAX_TITLE),
    }
    if job_id is not None:
        body["id"] = check_text("job_id", job_id, max_len=MAX_USER_ID)
    if workflow_id is not None:
        body["workflowId"] = check_text("workflow_id", workflow_id, max_len=MAX_JOB_TYPE)
    if metadata is not None:
        body["metadata"] = check_metadata(metadata)
    if queue is not None:
        body["queue"] = coerce_queue(queue).to_wire()
    if stage is not None:
        body["stage"] = coerce_stage(stage).to_wire()
    if estimated_completion_at is not None:
        body["estimatedCompletionAt"] = check_datetime(estimated_completion_at,
                                                       "estimated_completion_at")
    if estimated_duration is not None:
        body["estimatedDuration"] = check_duration_ms(estimated_duration, "estimated_duration")
    if ttl_seconds is not None:
        body["ttlSeconds"] = check_int("ttl_seconds", ttl_seconds, minimum=MIN_TTL_SECONDS,
                                       maximum=MAX_TTL_SECONDS)
    if parent_job_id is not None:
        body["parentJobId"] = check_text("parent_job_id", parent_job_id, max_len=MAX_USER_ID)
    if child_index is not None:
        if parent_job_id is None:
            fail("child_index", "needs parent_job_id")
        body["childIndex"] = check_int("child_index", child_index, minimum=0,
                                       maximum=MAX_TOTAL_CHILDREN - 1)
    if total_children is not None:
        body["totalChildren"] = check_int("total_children", total_children, minimum=1,
                                          maximum=MAX_TOTAL_CHILDREN)
    if child_progress_mode is not None:
        body["childProgressMode"] = check_choice(child_progress_mode, "child_progress_mode",
                                                 CHILD_PROGRESS_MODES)
    if stale_after is not None:
        body["staleAfterSeconds"] = _stale_after(stale_after)
    return body


def _stale_after(value: object) -> int:
    return check_int("stale_after", value, minimum=MIN_STALE_AFTER, maximum=MAX_STALE_AFTER)


def progress_body(
    progress: float,
    *,
    message: str | None,
    stage: Stage | Mapping[str, Any] | None,
    queue: Queue | Mapping[str, Any] | None,
    metadata: Mapping[str, Any] | None,
    estimated_completion_at: datetime | str | None,
    push: bool | Mapping[str, Any] | None,
    stale_after: int | None = None,
) -> dict[str, Any]:
    """Validate the arguments of a progress call and return its body."""
    body: dict[str, Any] = {"progress": check_progress(progress)}
    if message is not None:
        body["message"] = check_opt_text("message", message, max_len=MAX_MESSAGE)
    if stage is not None:
        body["stage"] = coerce_stage(stage).to_wire()
    if queue is not None:
        body["queue"] = coerce_queue(queue).to_wire()
    if metadata is not None:
        body["metadata"] = check_metadata(metadata)
    if estimated_completion_at is not None:
        body["estimatedCompletionAt"] = check_datetime(estimated_completion_at,
                                                       "estimated_completion_at")
    if push is not None:
        body["push"] = _push(push, "push")
    if stale_after is not None:
        body["staleAfterSeconds"] = _stale_after(stale_after)
    return body


def complete_body(
    *,
    result: JobResult | Mapping[str, Any] | None,
    message: str | None,
    push: bool | Mapping[str, Any] | None,
    live_activity: bool | Mapping[str, Any] | None,
) -> dict[str, Any]:
    """Validate the arguments of a complete call and return its body."""
    body: dict[str, Any] = {}
    if result is not None:
        body["result"] = coerce_result(result).to_wire()
    if message is not None:
        body["message"] = check_opt_text("message", message, max_len=MAX_MESSAGE)
    if push is not None:
        body["push"] = _push(push, "push")
    if live_activity is not None:
        body["liveActivity"] = _push(live_activity, "live_activity")
    return body


def fail_body(
    *,
    error: JobError | Mapping[str, Any],
    retryable: bool | None,
    push: bool | Mapping[str, Any] | None,
) -> dict[str, Any]:
    """Validate the arguments of a fail call and return its body."""
    body: dict[str, Any] = {"error": coerce_error(error).to_wire()}
    if retryable is not None:
        body["retryable"] = check_bool(retryable, "retryable")
    if push is not None:
        body["push"] = _push(push, "push")
    return body


def list_params(user_id: str, limit: int | None, cursor: str | None) -> dict[str, Any]:
    """The query of ``GET /jobs`` for one user's jobs."""
    params: dict[str, Any] = {"userId": check_text("user_id", user_id, max_len=255)}
    if limit is not None:
        params["limit"] = check_int("limit", limit, minimum=1, maximum=MAX_LIST_LIMIT)
    if cursor is not None:
        params["cursor"] = check_text("cursor", cursor, max_len=4096)
    return params


def children_params(cursor: str | None, limit: int | None) -> dict[str, Any] | None:
    """The query of ``GET /jobs/{id}/children``; ``None`` when nothing was given."""
    # Sent only when given: a backend that does not paginate children sees the old call.
    params: dict[str, Any] = {}
    if cursor is not None:
        params["cursor"] = check_text("cursor", cursor, max_len=4096)
    if limit is not None:
        params["limit"] = check_int("limit", limit, minimum=1, maximum=MAX_LIST_LIMIT)
    return params or None


def _jobs_ok(value: object) -> bool:
    return isinstance(value, builtins.list) and all(job_shape(job) is None for job in value)


def page_shape(data: object) -> str | None:
    """Check a decoded answer is a job list."""
    if isinstance(data, Mapping) and _jobs_ok(data.get("jobs")):
        return None
    return "a job list ({\"jobs\": [job, ...]})"


def family_shape(data: object) -> str | None:
    """Check a decoded answer is a parent with its children."""
    if isinstance(data, Mapping) and job_shape(data.get("parent")) is None \
            and _jobs_ok(data.get("children")):
        return None
    return "a job family ({\"parent\": job, \"children\": [job, ...]})"


def token_shape(data: object) -> str | None:
    """Check a decoded answer is a user token."""
    if isinstance(data, Mapping) and parse_datetime(data.get("expiresAt")) is not None:
        try:
            check_api_key(data.get("token"))
        except ValidationError:
            pass
        else:
            return None
    return "a token ({\"token\": \"ut_...\", \"expiresAt\": date-time})"


def next_cursor(data: Mapping[str, Any]) -> str | None:
    """The cursor of the next page, if the answer names one."""
    cursor = data.get("nextCursor")
    return cursor if isinstance(cursor, str) and cursor else None


def token_body(user_id: str, ttl_seconds: int) -> dict[str, Any]:
    """The ``POST /tokens`` body, checked."""
    return {"userId": check_text("user_id", user_id, max_len=MAX_USER_ID),
            "ttlSeconds": check_int("ttl_seconds", ttl_seconds, minimum=MIN_TTL_SECONDS,
                                    maximum=MAX_TTL_SECONDS)}


def user_token(data: Mapping[str, Any]) -> UserToken:
    """The ``UserToken`` of a ``POST /tokens`` answer that ``token_shape`` accepted."""
    expires_at = parse_datetime(data["expiresAt"])
    assert expires_at is not None  # token_shape checked it
    return UserToken(data["token"], expires_at)


def parent_body(job_type: str, *, user_id: str, title: str, child_count: int,
                 child_progress_mode: ChildProgressMode | None,
                 metadata: Mapping[str, Any] | None, ttl_seconds: int | None,
                 job_id: str | None) -> dict[str, Any]:
    """The ``POST /jobs`` body of a parent job, checked."""
    return start_body(job_type=job_type, user_id=user_id, title=title, job_id=job_id,
                      metadata=metadata, ttl_seconds=ttl_seconds,
                      total_children=check_int("child_count", child_count, minimum=1,
                                               maximum=MAX_TOTAL_CHILDREN),
                      child_progress_mode=child_progress_mode)


def check_batch(child_titles: Sequence[str]) -> builtins.list[str]:
    """Check the titles of a batch's children."""
    if isinstance(child_titles, str) or not isinstance(child_titles, Sequence):
        fail("child_titles", "must be a list of titles")
    if not 1 <= len(child_titles) <= MAX_TOTAL_CHILDREN:
        fail("child_titles", f"must hold 1 to {MAX_TOTAL_CHILDREN} titles, "
                             f"got {len(child_titles)}")
    return [check_text(f"child_titles[{i}]", title, max_len=MAX_TITLE)
            for i, title in enumerate(child_titles)]


# Batched reads and long polls (extensions a backend advertises in GET /healthz) -----

MAX_WATCH_WAIT = 30.0


def check_ids(job_ids: object) -> builtins.list[str]:
    """The ids of a batched read, checked, repeats dropped, in the order first given."""
    if isinstance(job_ids, (str, bytes)) or not isinstance(job_ids, Sequence):
        fail("job_ids", f"must be a sequence of job ids, not {type(job_ids).__name__}")
    ids: builtins.list[str] = []
    for index, job_id in enumerate(job_ids):
        text = check_text(f"job_ids[{index}]", job_id, max_len=255)
        if "," in text:
            # Commas separate the ids of ?ids=; such an id can only be read alone.
            fail(f"job_ids[{index}]", "holds a comma: read such a job with get()")
        ids.append(text)
    return builtins.list(dict.fromkeys(ids))


def ids_shape(data: object) -> str | None:
    """Check a decoded answer is a batched read (``{"jobs": [...], "missing": [...]}``)."""
    if isinstance(data, Mapping) and _jobs_ok(data.get("jobs")):
        missing = data.get("missing", [])
        if isinstance(missing, builtins.list) and all(isinstance(m, str) for m in missing):
            return None
    return "a batched read ({\"jobs\": [job, ...], \"missing\": [id, ...]})"


def offered(extensions: Mapping[str, Any], name: str, field: str) -> float | None:
    """The positive number ``field`` of extension ``name`` if the backend offers it."""
    entry = extensions.get(name)
    value = entry.get(field) if isinstance(entry, Mapping) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        return None
    return float(value)


def extensions_of(data: object) -> dict[str, Any]:
    """The ``extensions`` of a ``GET /healthz`` answer (none if it has no such object)."""
    if isinstance(data, Mapping) and isinstance(data.get("extensions"), Mapping):
        return dict(data["extensions"])
    return {}


def check_watch(interval: object, wait: object) -> tuple[float, float]:
    """Check ``watch``'s ``interval`` (0–3600 s) and ``wait`` (0–30 s)."""
    for name, value, most in (("interval", interval, 3600.0), ("wait", wait, MAX_WATCH_WAIT)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not 0 < value <= most:
            fail(name, f"must be a number of seconds above 0 and at most {most:g}, "
                       f"got {value!r}")
    return float(interval), float(wait)  # type: ignore[arg-type]


def wait_param(seconds: float) -> str:
    """``seconds`` as a ``wait`` query value (at most 3 decimals, never 0)."""
    return f"{max(0.001, seconds):.3f}".rstrip("0").rstrip(".")

